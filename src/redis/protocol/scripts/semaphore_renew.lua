-- Renew a held permit (or a reader's hold: the same shape).
--
-- KEYS[1] the ZSET; KEYS[2] the lock key of the name, holding the mark of
-- the holders' kind ('lockyard:semaphore', or 'lockyard:readers'), kept at
-- least as long as every hold; KEYS[3] (semaphores only) the stored permit
-- count, kept alive as long as the ZSET
-- ARGV[1] owner value; the last ARGV the ttl in ms (see extend.lua: the
-- arguments before it are the release's)
--
-- Returns 1 when renewed, 0 when the permit is gone or already expired
-- (someone may have taken it over: the holder has lost it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[#ARGV])
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) <= now then
  return 0
end
local mark = 'lockyard:readers'
if KEYS[3] then
  mark = 'lockyard:semaphore'
end
local w = redis.call('GET', KEYS[2])
if w and w ~= mark then
  -- Another kind of hold took the name: ours is gone.
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('SET', KEYS[2], mark, 'PX', ttl)
end
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[1]))
end
return 1
