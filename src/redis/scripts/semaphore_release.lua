-- Give a permit back and wake waiters.
-- KEYS[1] permits ZSET; KEYS[2] release channel; ARGV[1] owner value
-- Returns 1 when the permit was held, 0 when it was not (expired, taken over).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', KEYS[2], 'sem')
  return 1
end
return 0
