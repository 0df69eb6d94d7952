-- Publishes a batch of events to one channel, atomically:
--   1. create the epoch if Redis has none (epoch.lua, prepended);
--   2. honour an idempotency key: a known key returns the first ids;
--   3. take the next seqs from the one global counter;
--   4. append each event to the channel's stream under id "<seq>-0",
--      trimming the oldest with XDEL so max-deleted-entry-id records what
--      is gone; the first entry of a new stream carries the floor "f"
--      below which this channel's history was already lost;
--   5. remember the channel's newest seq, and publish the batch on the one
--      events channel, "<epoch> <first seq> <body>".
-- Scripts run one at a time, so seq order and pub/sub order agree.
--
-- KEYS: 1 seq, 2 epoch, 3 stream, 4 high-water hash, 5 floor, 6 idempotency
-- ARGV: 1 channel, 2 idempotent ("1"/"0"), 3 idempotency ttl (s),
--       4 fingerprint, 5 max stream length, 6 stream ttl (s),
--       7 pub/sub channel, 8 body, 9 event count,
--       then per event: type ("" for none), data, json ("1"/"0")
if ARGV[2] == '1' then
  local seen = redis.call('GET', KEYS[6])
  if seen then
    local e, f, c, fp = string.match(seen, '^(%d+):(%d+):(%d+):(.*)$')
    if fp ~= ARGV[4] then
      return {epoch, '0', '0', 'conflict'}
    end
    return {e, f, c, 'replayed'}
  end
end
local n = tonumber(ARGV[9])
local last = redis.call('INCRBY', KEYS[1], n)
local first = last - n + 1
local fresh = redis.call('EXISTS', KEYS[3]) == 0
for i = 0, n - 1 do
  local at = 10 + i * 3
  local fields = {'d', ARGV[at + 1]}
  if ARGV[at] ~= '' then
    fields[#fields + 1] = 't'
    fields[#fields + 1] = ARGV[at]
  end
  if ARGV[at + 2] == '1' then
    fields[#fields + 1] = 'j'
    fields[#fields + 1] = '1'
  end
  if fresh and i == 0 then
    fields[#fields + 1] = 'f'
    fields[#fields + 1] = redis.call('HGET', KEYS[4], ARGV[1]) or redis.call('GET', KEYS[5]) or '0'
  end
  redis.call('XADD', KEYS[3], string.format('%d-0', first + i), unpack(fields))
end
local over = redis.call('XLEN', KEYS[3]) - tonumber(ARGV[5])
if over > 0 then
  local old = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', over)
  local ids = {}
  for i = 1, #old do
    ids[i] = old[i][1]
  end
  redis.call('XDEL', KEYS[3], unpack(ids))
end
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('HSET', KEYS[4], ARGV[1], last)
if ARGV[2] == '1' then
  redis.call('SET', KEYS[6], epoch .. ':' .. first .. ':' .. n .. ':' .. ARGV[4], 'EX', ARGV[3])
end
redis.call('PUBLISH', ARGV[7], epoch .. ' ' .. first .. ' ' .. ARGV[8])
return {epoch, tostring(first), tostring(n), 'published'}
