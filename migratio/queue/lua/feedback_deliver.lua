-- Push the oldest waiting status line of one migration once its interval has passed.
-- KEYS: 1 next, 2 pending, 3 due, 4 Sidekiq's queues set, 5 Sidekiq's feedback queue
-- ARGV: 1 member, 2 now (ms), 3 interval (ms), 4 enqueued_at
-- Returns 1 when a line was pushed, 0 otherwise.
local now, interval = tonumber(ARGV[2]), tonumber(ARGV[3])
local allowed = tonumber(redis.call('get', KEYS[1]) or '0')
if now < allowed then
  redis.call('zadd', KEYS[3], 'XX', allowed, ARGV[1])
  return 0
end
local item = redis.call('lpop', KEYS[2])
if not item then
  redis.call('zrem', KEYS[3], ARGV[1])
  return 0
end
redis.call('sadd', KEYS[4], 'feedback')
redis.call('lpush', KEYS[5], string.sub(item, 2) .. ',"enqueued_at":' .. ARGV[4] .. '}')
if interval > 0 then redis.call('set', KEYS[1], now + interval, 'PX', interval) end
if redis.call('llen', KEYS[2]) > 0 then
  redis.call('zadd', KEYS[3], now + interval, ARGV[1])
else
  redis.call('zrem', KEYS[3], ARGV[1])
end
return 1
