-- Count the unexpired members of a set of tokens scored by expiry (ms).
-- KEYS[1] the ZSET. Returns the count.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
