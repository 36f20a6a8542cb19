-- Take one permit of a semaphore.
--
-- KEYS[1] permits ZSET (member = holder value, score = expiry in ms, server
--         clock)
-- KEYS[2] fencing counter
-- KEYS[3] the stored permit count (lives as long as the ZSET)
-- KEYS[4] the lock key of the same name: free, or holding the mark
--         'lockyard:semaphore' (set here, PX at least the longest permit,
--         so that a writer's SET NX alone sees the permits); a lock's value
--         or the readers' mark means the name is a lock (one name is one
--         kind of lock)
-- ARGV[1] owner value (random token, newline, owner metadata), ARGV[2] ttl
-- ms, ARGV[3] permits
--
-- Returns {1, fencing_token} on success,
--         {0, ms_until_earliest_expiry, 0, holders, earliest holder's value}
--         when all permits are taken;
--         an error reply WRONGKIND when the name is in use as a lock,
--         PERMITS <stored> <asked> when the semaphore is in use with another
--         permit count.
local w = redis.call('GET', KEYS[4])
if w and w ~= 'lockyard:semaphore' then
  return redis.error_reply('WRONGKIND lock')
end
local stored = redis.call('GET', KEYS[3])
if stored and stored ~= ARGV[3] then
  return redis.error_reply('PERMITS ' .. stored .. ' ' .. ARGV[3])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local permits = tonumber(ARGV[3])
-- Expired permits (crashed holders) come back here.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local holders = redis.call('ZCARD', KEYS[1])
-- A retry of an attempt whose reply was lost finds its own token: take it
-- again with a fresh fencing token rather than a second permit.
if holders < permits or redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  redis.call('SET', KEYS[3], ARGV[3], 'PX', redis.call('PTTL', KEYS[1]))
  if redis.call('PTTL', KEYS[4]) < ttl then
    redis.call('SET', KEYS[4], 'lockyard:semaphore', 'PX', ttl)
  end
  return {1, redis.call('INCR', KEYS[2])}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(tonumber(first[2]) - now, 0), 0, holders, first[1]}
