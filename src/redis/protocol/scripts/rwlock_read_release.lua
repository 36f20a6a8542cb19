-- Give a read lock back; wake waiting writers when the last reader leaves.
--
-- KEYS[1] readers ZSET; KEYS[2] the lock key (the readers' mark, removed
-- with the last reader, else cut to the longest remaining read hold);
-- ARGV[1] owner value; ARGV[2] the release channel
--
-- Returns 1 when the read lock was held, 0 when it was not.
--
-- Every read comes before the writes that may delete the ZSET and the mark,
-- which are never touched after them: on a Cluster node whose slot
-- migrates, a key the node no longer has fails the script (see release.lua).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local others = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local held = 0
if score then
  held = 1
  if tonumber(score) > now then
    others = others - 1
  end
end
local mark = redis.call('GET', KEYS[2]) == 'lockyard:readers'
if others == 0 then
  -- Nobody else reads: the ZSET goes, with any expired members, and so
  -- does the mark (never a writer's value: no writer holds while we do).
  redis.call('DEL', KEYS[1])
  if mark then
    redis.call('DEL', KEYS[2])
  end
  redis.call('PUBLISH', ARGV[2], 'rw')
else
  -- Live readers remain, so the ZSET does too, and their mark, but no
  -- longer than the longest of their holds: ours may have been longer,
  -- and a mark that outlived every reader would keep a semaphore of the
  -- name out (a writer would count the readers and take over).
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local left = math.max(tonumber(last[2]) - now, 1)
  redis.call('PEXPIRE', KEYS[1], left)
  if mark then
    redis.call('PEXPIRE', KEYS[2], left)
  end
end
return held
