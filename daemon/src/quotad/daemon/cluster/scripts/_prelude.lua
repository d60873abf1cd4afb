-- Shared by every quotad script (prepended to each one). Times are integer microseconds of
-- the server's clock (TIME), amounts integer units (requests, tokens, or nano-USD).
--
-- A window of a gate is two keys: its log (a sorted set of entries scored by the server time
-- they expire) and its state (a hash: 'used' = the sum of live entries, 'a:<entry>' = each
-- entry's amount, 'ext'/'extu' = usage a provider's headers report beyond ours and until
-- when, 'wu'/'wh' = until when and by which host the window is waited on).

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function num(value)
  return tonumber(value) or 0
end

local CHUNK = 500

-- Forget the entries whose expiry is at or before now; the window's use after.
local function expire(log, st, now)
  local used = num(redis.call('HGET', st, 'used'))
  while true do
    local gone = redis.call('ZRANGEBYSCORE', log, '-inf', now, 'LIMIT', 0, CHUNK)
    if #gone == 0 then break end
    local fields = {}
    for i = 1, #gone do fields[i] = 'a:' .. gone[i] end
    local amounts = redis.call('HMGET', st, unpack(fields))
    for i = 1, #amounts do used = used - num(amounts[i]) end
    redis.call('HDEL', st, unpack(fields))
    redis.call('ZREM', log, unpack(gone))
    if #gone < CHUNK then break end
  end
  if used < 0 or redis.call('ZCARD', log) == 0 then used = 0 end
  redis.call('HSET', st, 'used', used)
  return used
end

-- Usage a provider reported beyond ours, and until when (0, 0 when none is in force).
local function external(st, now)
  local ext = redis.call('HMGET', st, 'ext', 'extu')
  if num(ext[2]) > now then return num(ext[1]), num(ext[2]) end
  return 0, 0
end

-- When `excess` more units of the window have expired (its log in expiry order, and the
-- external usage at its own time); -1: never.
local function frees_at(log, st, now, excess, ext, extu)
  local pending = ext > 0
  local offset = 0
  while true do
    local page = redis.call('ZRANGEBYSCORE', log, '-inf', '+inf', 'WITHSCORES',
      'LIMIT', offset, CHUNK)
    if #page == 0 then break end
    local fields = {}
    for i = 1, #page, 2 do fields[#fields + 1] = 'a:' .. page[i] end
    local amounts = redis.call('HMGET', st, unpack(fields))
    for j = 1, #amounts do
      local expires = tonumber(page[2 * j])
      if pending and extu <= expires then
        excess = excess - ext
        pending = false
        if excess <= 0 then return extu end
      end
      excess = excess - num(amounts[j])
      if excess <= 0 then return expires end
    end
    offset = offset + #amounts
    if #amounts < CHUNK then break end
  end
  if pending and excess - ext <= 0 then return extu end
  return -1
end

-- The epoch (id, resync_until) of the fleet's state; a Redis restarted empty has none.
local function epoch_of(key)
  local epoch = redis.call('HMGET', key, 'id', 'resync_until')
  return epoch[1] or '', num(epoch[2])
end
