-- Shared by every quotad script (prepended to each one). Times are integer microseconds of
-- the server's clock (TIME), amounts integer units (requests, tokens, or nano-USD).
--
-- A window of a gate is two keys: its log (a sorted set of entries scored by the server time
-- they expire) and its state (a hash: 'used' = the sum of live entries, 'a:<entry>' = each
-- entry's amount, 'ext'/'extu' = usage a provider's headers report beyond ours and until
-- when, 'wu'/'wh' = until when and by which host the window is waited on, 'alive' = until
-- when the keys' lifetime need not be renewed). Each redis.call costs: a window is read with
-- one HMGET and written with one HSET (and one ZADD), whatever a call does to it.

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function num(value)
  return tonumber(value) or 0
end

local CHUNK = 500
local KEEP_ALIVE_US = 10000000

-- A window's state as of now, with room for the writes a call makes (`set`, `zadd`).
local function load(st, now)
  local f = redis.call('HMGET', st, 'used', 'ext', 'extu', 'wu', 'wh', 'alive')
  local w = {used = num(f[1]), ext = num(f[2]), extu = num(f[3]), wu = num(f[4]),
    wh = f[5] or '', alive = num(f[6]), set = {}, zadd = {}, dirty = false, emptied = false}
  if w.extu <= now then w.ext = 0 end
  return w
end

-- Forget the entries whose expiry is at or before now (w.used follows).
local function expire(log, st, w, now)
  while true do
    local gone = redis.call('ZRANGEBYSCORE', log, '-inf', now, 'LIMIT', 0, CHUNK)
    if #gone == 0 then break end
    local fields = {}
    for i = 1, #gone do fields[i] = 'a:' .. gone[i] end
    local amounts = redis.call('HMGET', st, unpack(fields))
    for i = 1, #amounts do w.used = w.used - num(amounts[i]) end
    redis.call('HDEL', st, unpack(fields))
    redis.call('ZREM', log, unpack(gone))
    w.dirty = true
    if #gone < CHUNK then
      if redis.call('ZCARD', log) == 0 then
        w.used = 0
        w.emptied = true
      elseif w.used < 0 then
        w.used = 0
      end
      break
    end
  end
end

-- Write what a call changed (one HSET, one ZADD), and renew the keys' lifetime (ttl_ms, past
-- every entry's expiry) at most every KEEP_ALIVE_US, and whenever the log was emptied (w.emptied:
-- Redis deleted it, and a ZADD makes it anew without a lifetime; emptied and not written again
-- now, the next write renews it).
local function save(log, st, w, now, ttl_ms)
  if #w.zadd > 0 then redis.call('ZADD', log, unpack(w.zadd)) end
  local renew = #w.zadd > 0 and (w.alive <= now or w.emptied)
  if not (w.dirty or renew) then return end
  local fields = {'used', w.used}
  for i = 1, #w.set do fields[#fields + 1] = w.set[i] end
  if renew then
    fields[#fields + 1] = 'alive'
    fields[#fields + 1] = now + KEEP_ALIVE_US
    redis.call('PEXPIRE', log, ttl_ms)
  elseif w.emptied then
    fields[#fields + 1] = 'alive'
    fields[#fields + 1] = 0
  end
  redis.call('HSET', st, unpack(fields))
  if renew then redis.call('PEXPIRE', st, ttl_ms) end
end

-- Call visit(expires, amount) on each entry of a window, in expiry order, a page of CHUNK
-- entries at a time (one ZRANGEBYSCORE and one HMGET per page); stop at the first entry for
-- which visit returns a value, and return that value (nil when it never did).
local function each_entry(log, st, visit)
  local offset = 0
  while true do
    local page = redis.call('ZRANGEBYSCORE', log, '-inf', '+inf', 'WITHSCORES',
      'LIMIT', offset, CHUNK)
    if #page == 0 then return nil end
    local fields = {}
    for i = 1, #page, 2 do fields[#fields + 1] = 'a:' .. page[i] end
    local amounts = redis.call('HMGET', st, unpack(fields))
    for j = 1, #amounts do
      local found = visit(tonumber(page[2 * j]), num(amounts[j]))
      if found ~= nil then return found end
    end
    offset = offset + #amounts
    if #amounts < CHUNK then return nil end
  end
end

-- When `excess` more units of the window have expired (its log in expiry order, and the
-- external usage at its own time); -1: never. Every entry left is live (expire() ran).
local function frees_at(log, st, excess, ext, extu)
  local pending = ext > 0
  local at = each_entry(log, st, function(expires, amount)
    if pending and extu <= expires then
      excess = excess - ext
      pending = false
      if excess <= 0 then return extu end
    end
    excess = excess - amount
    if excess <= 0 then return expires end
  end)
  if at ~= nil then return at end
  if pending and excess - ext <= 0 then return extu end
  return -1
end

-- The server time now, and the refusal of a call made under the caller's epoch id: {'epoch',
-- now, id} when it is not the fleet's (a Redis restarted empty has none), {'resync', now,
-- until} while the fleet re-syncs; nil when the call may go on.
local function check_epoch(key, id)
  local epoch = redis.call('HMGET', key, 'id', 'resync_until')
  local now = now_us()
  local fleet_id, resync_until = epoch[1] or '', num(epoch[2])
  if fleet_id ~= id then return now, {'epoch', now, fleet_id} end
  if resync_until > now then return now, {'resync', now, resync_until} end
  return now, nil
end
