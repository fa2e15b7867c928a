-- Put a payload from a processing list back at the end of the source queue's line.
-- KEYS: 1 processing, 2 source; ARGV: 1 payload.
-- Returns the queue's new length, 0 when the payload was not there.
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
return redis.call('lpush', KEYS[2], ARGV[1])
