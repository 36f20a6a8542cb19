-- Give back a key holding our owner value (an exclusive hold, or a waiting
-- writer's intent), and wake waiters.
--
-- KEYS[1]  the key (a string holding an owner value)
-- ARGV[1]  our owner value
-- ARGV[2]  the release channel to PUBLISH on (not a key: see below)
--
-- Returns 1 when it held our value and is gone, 0 when it was gone already
-- or held by someone else.
--
-- One key, touched only before it is deleted: while a Cluster slot
-- migrates, a node runs a script only if every key it names is there
-- (else TRYAGAIN, or ASK when none is), and a script that touches a key the
-- node does not have (or no longer has) fails half-way. The channel is an
-- argument for the same reason: as a key it would never exist.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
