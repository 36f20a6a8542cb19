-- Give a read lock back; wake waiting writers when the last reader leaves.
-- KEYS[1] readers ZSET; KEYS[2] release channel; ARGV[1] owner value
-- Returns 1 when the read lock was held, 0 when it was not.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('PUBLISH', KEYS[2], 'rw')
end
return held
