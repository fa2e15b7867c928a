-- Compare-and-set: take a key over only while it still holds the value we saw.
-- KEYS: 1 the key; ARGV: 1 the expected value, 2 the new value, 3 its TTL (s).
-- Returns OK when replaced, 0 otherwise.
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 0
