-- Acquire an exclusive lock and issue its fencing token, atomically.
--
-- KEYS[1]  the lock key (a string holding the owner value)
-- KEYS[2]  the fencing counter (an integer that never expires)
-- ARGV[1]  the owner value: a random token, a newline, owner metadata
-- ARGV[2]  the lease in milliseconds
--
-- Returns {1, fence} when acquired, {0, pttl, holder value} when held by
-- someone else (pttl is -1 if the key has no expiry), and an error reply
-- starting with WRONGTYPE when a key holds something that is not ours.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.pcall('INCR', KEYS[2])
  if type(fence) == 'table' and fence.err then
    -- Never leave a lock behind without a fencing token.
    redis.call('DEL', KEYS[1])
    return fence
  end
  return {1, fence}
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' then
  return redis.error_reply('WRONGTYPE lock key ' .. KEYS[1] .. ' holds a ' .. kind)
end
return {0, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}
