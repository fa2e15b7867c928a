-- A status line for Atmosphere, paced per migration (see migratio/queue/feedback.py).
-- KEYS: 1 next (when the next push is allowed), 2 pending (lines waiting), 3 due (zset of
--       migrations with lines waiting), 4 Sidekiq's queues set, 5 Sidekiq's feedback queue
-- ARGV: 1 member (the migration), 2 the job's JSON without its closing brace,
--       3 '1' for a final line, 4 now (ms), 5 interval (ms), 6 enqueued_at, 7 pending TTL (s)
-- Returns 1 when pushed now, 0 when it waits, 2 when it waits and superseded a progress line.
local now, interval = tonumber(ARGV[4]), tonumber(ARGV[5])
local allowed = tonumber(redis.call('get', KEYS[1]) or '0')
if redis.call('llen', KEYS[2]) == 0 and now >= allowed then
  redis.call('sadd', KEYS[4], 'feedback')
  redis.call('lpush', KEYS[5], ARGV[2] .. ',"enqueued_at":' .. ARGV[6] .. '}')
  if interval > 0 then redis.call('set', KEYS[1], now + interval, 'PX', interval) end
  return 1
end
local superseded = 0
local tail = redis.call('lindex', KEYS[2], -1)
if tail and string.sub(tail, 1, 1) == 'P' then
  redis.call('rpop', KEYS[2])
  superseded = 2
end
local kind = 'P'
if ARGV[3] == '1' then kind = 'F' end
redis.call('rpush', KEYS[2], kind .. ARGV[2])
redis.call('expire', KEYS[2], tonumber(ARGV[7]))
redis.call('zadd', KEYS[3], 'NX', math.max(allowed, now), ARGV[1])
return superseded
