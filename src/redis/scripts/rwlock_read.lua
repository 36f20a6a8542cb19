-- Take a read lock.
-- KEYS[1] readers ZSET (member = reader token, score = expiry ms, server clock)
-- KEYS[2] writer key (token of the writer, PX ttl)
-- KEYS[3] writer-intent key (token of the first waiting writer, PX)
-- KEYS[4] fencing counter
-- ARGV[1] owner value (random token, newline, owner metadata), ARGV[2] ttl ms
-- Returns {1, fencing_token} on success,
--         {0, ms_to_wait, reason, 1, blocker's value}: reason 1 = a writer
--           holds it, 2 = a writer is waiting (readers queue behind it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local w = redis.call('PTTL', KEYS[2])
if w > 0 then
  return {0, w, 1, 1, redis.call('GET', KEYS[2])}
end
local i = redis.call('PTTL', KEYS[3])
if i > 0 then
  return {0, i, 2, 1, redis.call('GET', KEYS[3])}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {1, redis.call('INCR', KEYS[4])}
