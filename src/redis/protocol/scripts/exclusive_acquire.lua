-- Take a resource exclusively: the plain lock and the RW lock's writer are
-- one and the same (one name is one lock). Issues a fencing token.
--
-- KEYS[1] the lock key (a string holding the exclusive owner's value, PX)
-- KEYS[2] the readers ZSET (member = reader value, score = expiry ms)
-- KEYS[3] the waiting writer's intent key (its value, PX)
-- KEYS[4] the semaphore ZSET of the same name (must not exist: one name is
--         one kind of lock)
-- KEYS[5] the fencing counter (never expires)
-- ARGV[1] the owner value: a random token, a newline, owner metadata
-- ARGV[2] the lease in milliseconds
-- ARGV[3] intent lease in ms, or 0 not to queue (a non-blocking attempt)
--
-- Returns {1, fence} when acquired;
--         {0, ms_to_wait, reason, holders, blocker's value} when not:
--           reason 1 = another exclusive holder, 2 = another writer waits
--           first, 3 = readers hold it (our intent is now set, unless
--           ARGV[3] is 0, so that no new reader gets in);
--         an error reply WRONGKIND when the name is in use as a semaphore,
--         WRONGTYPE when a key holds something lockyard did not write.
--
-- Cost (scripts/redis-script-cost.sh: callgrind on redis-server, 20,000
-- calls on free names, instructions per call including the server's network
-- and parsing work): the fenced floor's SET NX PX + INCR 47.2-47.4 k, this
-- script 52.8-53.0 k (1.12x), this script without its EXISTS 48.4-48.6 k
-- (1.03x). The free-name path's cost beyond the floor is the one-name-one-
-- lock EXISTS of the readers, intent and semaphore keys; a protocol that
-- keeps them off that path (readers and permits marking the lock key) would
-- cost the server what the floor costs. Not done yet (issue 19, step 3).
local function left(key)
  local ms = redis.call('PTTL', key)
  -- A key without expiry was not written by lockyard: look once a second.
  if ms < 0 then return 1000 end
  return ms
end
local function fenced()
  local fence = redis.pcall('INCR', KEYS[5])
  if type(fence) == 'table' and fence.err then
    -- Never leave a lock behind without a fencing token.
    redis.call('DEL', KEYS[1])
    return fence
  end
  return {1, fence}
end
-- The common case: nobody holds or uses the name.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[4]) == 0 then
    return fenced()
  end
  redis.call('DEL', KEYS[1])
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('WRONGKIND semaphore')
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE lock key ' .. KEYS[1] .. ' holds a ' .. kind)
end
local w = redis.call('GET', KEYS[1])
if w and w ~= ARGV[1] then
  return {0, left(KEYS[1]), 1, 1, w}
end
local i = redis.call('GET', KEYS[3])
if i and i ~= ARGV[1] then
  return {0, left(KEYS[3]), 2, 1, i}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local readers = redis.call('ZCARD', KEYS[2])
if readers > 0 then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
  end
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {0, math.max(tonumber(first[2]) - now, 0), 3, readers, first[1]}
end
if i then
  redis.call('DEL', KEYS[3])
end
-- Our own value (a retry whose answer was lost) or free: take it.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return fenced()
