-- Give a permit back and wake waiters.
--
-- KEYS[1] permits ZSET; KEYS[2] the stored permit count and KEYS[3] the
-- lock key holding the semaphore's mark (both removed with the last
-- holder: an unused semaphore leaves no state)
-- ARGV[1] owner value; ARGV[2] the release channel
--
-- Returns 1 when the permit was held, 0 when it was not (expired, taken over).
--
-- No key is touched after a write that may delete it: on a Cluster node
-- whose slot migrates, a key the node no longer has fails the script (see
-- release.lua).
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) == 1 then
    local mark = redis.call('GET', KEYS[3]) == 'lockyard:semaphore'
    redis.call('DEL', KEYS[1])
    redis.call('DEL', KEYS[2])
    if mark then
      redis.call('DEL', KEYS[3])
    end
  else
    redis.call('ZREM', KEYS[1], ARGV[1])
  end
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
