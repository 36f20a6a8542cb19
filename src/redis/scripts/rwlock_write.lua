-- Take the write lock, or queue as the waiting writer.
-- KEYS[1] readers ZSET, KEYS[2] writer key, KEYS[3] writer-intent key,
-- KEYS[4] fencing counter
-- ARGV[1] owner value (random token, newline, owner metadata)
-- ARGV[2] ttl ms
-- ARGV[3] intent ttl ms (0: do not queue, for a non-blocking attempt)
-- Returns {1, fencing_token} on success,
--         {0, ms_to_wait, reason, holders, blocker's value}: reason 1 =
--           another writer holds it,
--           2 = another writer is waiting first, 3 = readers hold it (this
--           writer's intent is now set, unless ARGV[3] is 0, so no new
--           reader gets in).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local w = redis.call('GET', KEYS[2])
if w and w ~= ARGV[1] then
  return {0, math.max(redis.call('PTTL', KEYS[2]), 0), 1, 1, w}
end
local i = redis.call('GET', KEYS[3])
if i and i ~= ARGV[1] then
  return {0, math.max(redis.call('PTTL', KEYS[3]), 0), 2, 1, i}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local readers = redis.call('ZCARD', KEYS[1])
if readers > 0 then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
  end
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.max(tonumber(first[2]) - now, 0), 3, readers, first[1]}
end
if i then
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
return {1, redis.call('INCR', KEYS[4])}
