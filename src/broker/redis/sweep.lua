-- Moves expired channels out of the high-water hash: a channel whose stream
-- has expired gives its newest seq to the floor (so a late resume into it
-- still gets a reset) and leaves the hash, which stays as small as the set
-- of live streams. Runs a slice of the hash at a time.
-- KEYS: 1 high-water hash, 2 floor
-- ARGV: 1 scan cursor, 2 count, 3 stream key prefix
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
local kv = r[2]
local moved = 0
for i = 1, #kv, 2 do
  if redis.call('EXISTS', ARGV[3] .. kv[i]) == 0 then
    local seq = tonumber(kv[i + 1])
    if seq > floor then
      floor = seq
    end
    redis.call('HDEL', KEYS[1], kv[i])
    moved = moved + 1
  end
end
redis.call('SET', KEYS[2], string.format('%d', floor))
return {r[1], moved}
