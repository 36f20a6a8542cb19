-- Give an exclusive hold back, or withdraw a waiting writer's intent, and
-- wake waiters.
--
-- KEYS[1] the lock key, KEYS[2] the writer-intent key, KEYS[3] the release
-- channel
-- ARGV[1] our owner value
--
-- Returns 1 when the lock was held with our value, 0 otherwise.
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
  redis.call('PUBLISH', KEYS[3], 'released')
end
return held
