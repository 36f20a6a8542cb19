-- Take a shared (read) hold.
--
-- KEYS[1] the readers ZSET (member = reader value, score = expiry ms, server
--         clock)
-- KEYS[2] the lock key: the exclusive holder's value, or the mark
--         'lockyard:readers' while readers hold (set here, PX at least the
--         longest read hold, so that a writer's SET NX alone sees them),
--         or 'lockyard:semaphore' (the name is a semaphore)
-- KEYS[3] the waiting writer's intent key (its value, PX)
-- KEYS[4] the fencing counter
-- ARGV[1] owner value (random token, newline, owner metadata), ARGV[2] ttl ms
--
-- Returns {1, fencing_token} on success,
--         {0, ms_to_wait, reason, 1, blocker's value}: reason 1 = an
--           exclusive holder, 2 = a writer is waiting (readers queue behind
--           it);
--         an error reply WRONGKIND when the name is in use as a semaphore.
local function left(key)
  local ms = redis.call('PTTL', key)
  if ms < 0 then return 1000 end
  return ms
end
local w = redis.call('GET', KEYS[2])
if w == 'lockyard:semaphore' then
  return redis.error_reply('WRONGKIND semaphore')
end
if w and w ~= 'lockyard:readers' then
  return {0, left(KEYS[2]), 1, 1, w}
end
local i = redis.call('GET', KEYS[3])
if i then
  return {0, left(KEYS[3]), 2, 1, i}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('SET', KEYS[2], 'lockyard:readers', 'PX', ttl)
end
return {1, redis.call('INCR', KEYS[4])}
