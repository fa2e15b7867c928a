-- Compare-and-delete: release a key only while it still holds our token.
-- KEYS: 1 the key; ARGV: 1 the expected value. Returns 1 when deleted, 0 otherwise.
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
