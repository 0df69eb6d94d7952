-- The deployment's epoch and newest seq, creating the epoch when Redis has
-- none, in one atomic step (epoch.lua comes first).
-- KEYS: 1 seq, 2 epoch
return {epoch, redis.call('GET', KEYS[1]) or '0'}
