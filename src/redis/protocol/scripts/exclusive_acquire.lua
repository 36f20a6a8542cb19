-- Take a resource exclusively: the plain lock and the RW lock's writer are
-- one and the same (one name is one lock). Issues a fencing token.
--
-- KEYS[1] the lock key: the exclusive owner's value, or a mark that the
--         name is held shared ('lockyard:readers') or is a semaphore with
--         holders ('lockyard:semaphore'), PX at least as long as theirs
-- KEYS[2] the readers ZSET (member = reader value, score = expiry ms)
-- KEYS[3] the waiting writer's intent key (its value, PX)
-- KEYS[4] the fencing counter (never expires)
-- ARGV[1] the owner value: a random token, a newline, owner metadata
-- ARGV[2] the lease in milliseconds
-- ARGV[3] the intent's lease in ms: 0 not to queue (a non-blocking
--         attempt); negative when an earlier attempt of this acquisition
--         set our intent (it is withdrawn when we take the lock)
--
-- Returns the fencing token (an integer, at least 1) when acquired;
--         {0, ms_to_wait, reason, holders, blocker's value} when not:
--           reason 1 = another exclusive holder, 2 = another writer waits
--           first, 3 = readers hold it (our intent is now set, unless
--           ARGV[3] is 0, so that no new reader gets in);
--         an error reply WRONGKIND when the name is in use as a semaphore,
--         WRONGTYPE when a key holds something lockyard did not write.
--
-- The free name costs what the fenced floor costs: INCR + SET NX PX, two
-- calls and no pcall, and its answer is the token alone (no array). Readers and semaphores mark the lock key while they
-- hold, so SET NX alone says the name is free of every kind of hold (no
-- EXISTS of the other keys), and the counter is incremented first, so that
-- a counter holding garbage fails the script before anything is taken (no
-- pcall and undo). A busy attempt spends a token: tokens stay unique and
-- increasing, only not consecutive. Measured with scripts/redis-script-cost.sh
-- (callgrind on redis-server, 20,000 calls on free names, each script with
-- its own KEYS and ARGV, instructions per call including the server's
-- network and parsing work, two rounds): this script 40.04 k, the fenced
-- floor's SET NX PX + INCR on its two keys 41.30-41.32 k (0.97x), the first
-- generation (five keys; SET NX PX, EXISTS of the readers, intent and
-- semaphore keys, INCR in a pcall) 52.40-52.50 k (1.27x). Every key named
-- costs the server too: the floor's script given five keys cost 47.3 k.
local fence = redis.call('INCR', KEYS[4])
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  -- 45 is '-': an intent of ours may be set.
  if string.byte(ARGV[3]) == 45 and redis.call('GET', KEYS[3]) == ARGV[1] then
    redis.call('DEL', KEYS[3])
  end
  return fence
end
local function left(key)
  local ms = redis.call('PTTL', key)
  -- A key without expiry was not written by lockyard: look once a second.
  if ms < 0 then return 1000 end
  return ms
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' then
  return redis.error_reply('WRONGTYPE lock key ' .. KEYS[1] .. ' holds a ' .. kind)
end
local w = redis.call('GET', KEYS[1])
if w == 'lockyard:semaphore' then
  return redis.error_reply('WRONGKIND semaphore')
end
if w ~= 'lockyard:readers' and w ~= ARGV[1] then
  return {0, left(KEYS[1]), 1, 1, w}
end
local i = redis.call('GET', KEYS[3])
if w == 'lockyard:readers' then
  if i and i ~= ARGV[1] then
    return {0, left(KEYS[3]), 2, 1, i}
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local readers = redis.call('ZCARD', KEYS[2])
  if readers > 0 then
    local intent = math.abs(tonumber(ARGV[3]))
    if intent > 0 then
      redis.call('SET', KEYS[3], ARGV[1], 'PX', intent)
    end
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, math.max(tonumber(first[2]) - now, 0), 3, readers, first[1]}
  end
  -- Only expired readers were left: their mark goes with them.
end
if i == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
-- Our own value (a retry whose answer was lost), or readers all gone.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return fence
