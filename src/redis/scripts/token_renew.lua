-- Renew a key that holds an owner token.
-- KEYS[1] key; ARGV[1] owner value, ARGV[2] ttl ms
-- Returns 1 when renewed, 0 when the key is gone or holds another token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
