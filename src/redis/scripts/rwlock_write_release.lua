-- Give the write lock back, or withdraw a waiting writer's intent, and wake
-- waiters.
-- KEYS[1] writer key, KEYS[2] writer-intent key, KEYS[3] release channel
-- ARGV[1] owner value
-- Returns 1 when the write lock was held by the token, 0 otherwise.
local held = 0
local changed = false
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  held = 1
  changed = true
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  changed = true
end
if changed then
  redis.call('PUBLISH', KEYS[3], 'rw')
end
return held
