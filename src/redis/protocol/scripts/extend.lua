-- Extend (renew) a lock's lease if (and only if) it is still ours.
--
-- KEYS[1]  the lock key
-- ARGV[1]  our owner value
-- ARGV[2]  the new lease in milliseconds (the watchdog passes the lease's
--          TTL as the last argument of every renewal script)
--
-- Returns 1 when extended, 0 when the key is gone or held by someone else.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
