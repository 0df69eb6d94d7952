-- Shared opening of publish.lua and state.lua (prepended to each when the
-- scripts are built): the deployment's epoch in `epoch`, created when Redis
-- has none (first start, or its data was lost), with the seq counter reset.
-- KEYS: 1 seq, 2 epoch
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
end
