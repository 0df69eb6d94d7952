-- Reads one channel's history between two seqs, with what is known to be
-- lost, in one atomic step (so trimming cannot slip in between).
--
-- KEYS: 1 stream, 2 high-water hash, 3 floor
-- ARGV: 1 channel, 2 newest seq to read (the snapshot), 3 oldest seq to
--       read, 4 most entries to return
-- Returns {exists, lost, entries}: with a stream, lost is its
-- max-deleted-entry-id and entries run newest first; without one (never
-- published, or expired), lost is where its history ended as far as known.
if redis.call('EXISTS', KEYS[1]) == 0 then
  local gone = redis.call('HGET', KEYS[2], ARGV[1]) or redis.call('GET', KEYS[3]) or '0'
  return {0, gone, {}}
end
local entries = redis.call('XREVRANGE', KEYS[1], ARGV[2] .. '-0', ARGV[3] .. '-0', 'COUNT', ARGV[4])
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local lost = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then
    lost = info[i + 1]
  end
end
return {1, lost, entries}
