-- Release a lock if (and only if) it is still ours, and wake waiters.
--
-- KEYS[1]  the lock key
-- ARGV[1]  our owner value
-- ARGV[2]  the release channel to PUBLISH on
--
-- Returns 1 when released, 0 when the key is gone or held by someone else.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
