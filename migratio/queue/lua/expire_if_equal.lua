-- Compare-and-expire: refresh a lock only while it still holds our token.
-- KEYS: 1 the key; ARGV: 1 the expected value, 2 the new TTL (s). Returns 1 when refreshed, 0 otherwise.
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
