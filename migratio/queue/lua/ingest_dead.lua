-- Move a payload from a processing list to the dead-letter list (newest first, bounded).
-- KEYS: 1 processing, 2 dead; ARGV: 1 payload, 2 entry, 3 max length.
-- Returns 1 when moved, 0 when the payload was not there.
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('lpush', KEYS[2], ARGV[2])
redis.call('ltrim', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
