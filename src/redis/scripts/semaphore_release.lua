-- Give a permit back and wake waiters.
--
-- KEYS[1] permits ZSET; KEYS[2] release channel; KEYS[3] the stored permit
-- count (removed with the last holder: an unused semaphore leaves no state)
-- ARGV[1] owner value
--
-- Returns 1 when the permit was held, 0 when it was not (expired, taken over).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[3])
  end
  redis.call('PUBLISH', KEYS[2], 'released')
  return 1
end
return 0
