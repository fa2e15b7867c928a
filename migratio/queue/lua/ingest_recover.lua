-- Give a stopped ingest consumer's payloads back to the queue (see migratio/queue/ingest.py).
-- KEYS: 1 its heartbeat, 2 its processing list, 3 the source queue, 4 the consumers set
-- ARGV: 1 the consumer. Returns how many were moved, -1 when the consumer is alive.
if redis.call('exists', KEYS[1]) == 1 then return -1 end
local n = 0
while redis.call('lmove', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do n = n + 1 end
redis.call('srem', KEYS[4], ARGV[1])
return n
