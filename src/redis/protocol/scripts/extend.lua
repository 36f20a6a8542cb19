-- Extend (renew) a lock's lease if (and only if) it is still ours.
--
-- KEYS[1]  the lock key
-- ARGV[1]  our owner value
-- ARGV[#ARGV] (the last) the new lease in milliseconds: the watchdog
--          appends the lease's TTL to a renewal's arguments, which are the
--          release's (value, channel), shared with it rather than built
--          again for every hold
--
-- Returns 1 when extended, 0 when the key is gone or held by someone else.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[#ARGV])
  return 1
end
return 0
