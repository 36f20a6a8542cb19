-- Give a read lock back; wake waiting writers when the last reader leaves.
--
-- KEYS[1] readers ZSET; ARGV[1] owner value; ARGV[2] the release channel
--
-- Returns 1 when the read lock was held, 0 when it was not.
--
-- Every read comes before the one write that may delete the ZSET, which is
-- never touched after it: on a Cluster node whose slot migrates, a key the
-- node no longer has fails the script (see release.lua).
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
if others == 0 then
  -- Nobody else reads: the ZSET goes, with any expired members.
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'rw')
else
  -- Live readers remain, so the ZSET does too.
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
return held
