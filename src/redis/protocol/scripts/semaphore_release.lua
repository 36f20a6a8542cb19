-- Give a permit back and wake waiters.
--
-- KEYS[1] permits ZSET; KEYS[2] the stored permit count and KEYS[3] the
-- lock key holding the semaphore's mark (all three removed with the last
-- live holder: an unused semaphore leaves no state; else cut to the longest
-- remaining permit)
-- ARGV[1] owner value; ARGV[2] the release channel
--
-- Returns 1 when the permit was held, 0 when it was not (expired and taken
-- over, or never held).
--
-- Every read comes before the writes that may delete a key, which is never
-- touched after: on a Cluster node whose slot migrates, a key the node no
-- longer has fails the script (see release.lua).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Live holders besides us (a crashed holder's expired member is not one).
local others = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
if tonumber(score) > now then
  others = others - 1
end
local mark = redis.call('GET', KEYS[3]) == 'lockyard:semaphore'
if others == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2])
  if mark then
    redis.call('DEL', KEYS[3])
  end
else
  -- The others' permits, and no longer than the longest of them: a mark
  -- that outlived every holder would keep locks of the name out.
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local left = math.max(tonumber(last[2]) - now, 1)
  redis.call('PEXPIRE', KEYS[1], left)
  redis.call('PEXPIRE', KEYS[2], left)
  if mark then
    redis.call('PEXPIRE', KEYS[3], left)
  end
end
redis.call('PUBLISH', ARGV[2], 'released')
return 1
