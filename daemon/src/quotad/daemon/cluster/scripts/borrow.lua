-- Borrow slices of windows: each ask is all-or-nothing across its windows.
-- KEYS: epoch, then per window its log and state, then pause keys.
-- ARGV: epoch id, host, lease_us, wait_us, window count, pause count,
--   per window: span_us, limit, ttl_ms;
--   ask count, per ask: waiter (1: a request waits on it; 0: ahead of need), pause index
--   (1-based among the pause keys; 0: none), item count, per item: window index (1-based),
--   need, want, entry id.
-- A granted item adds an entry of `grant` units to its window's log (need <= grant <= want),
-- expiring lease_us + span_us from now: every admission made from it during the lease is
-- counted for its whole span. An ask that does not fit marks its windows as waited on
-- (returns on them publish), and blocks them for the asks after it in this call.
-- Reply: {'ok', now, paused_until, {used per window}, {per ask: {1, {grants}} | {0, when}}}
-- where when is the server time it may fit (-1: never); {'epoch', now, id} when the caller's
-- epoch is not the fleet's; {'resync', now, until} while the fleet re-syncs.
local now, refused = check_epoch(KEYS[1], ARGV[1])
if refused then return refused end
local host = ARGV[2]
local lease_us, wait_us = tonumber(ARGV[3]), tonumber(ARGV[4])
local nwin, npause = tonumber(ARGV[5]), tonumber(ARGV[6])
local at = 6
local span, limit, ttl, w = {}, {}, {}, {}
for i = 1, nwin do
  span[i], limit[i], ttl[i] = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[at + 3]
  at = at + 3
  w[i] = load(KEYS[2 * i + 1], now)
  expire(KEYS[2 * i], KEYS[2 * i + 1], w[i], now)
end
local pauses = {}
local paused = 0
for p = 1, npause do
  pauses[p] = num(redis.call('GET', KEYS[1 + 2 * nwin + p]))
  if pauses[p] > paused then paused = pauses[p] end
end
local results = {}
local blocked = {}
local nasks = tonumber(ARGV[at + 1])
at = at + 1
for a = 1, nasks do
  local waiter, pause, nitems = ARGV[at + 1] == '1', tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  at = at + 3
  local items = {}
  for i = 1, nitems do
    items[i] = {tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), ARGV[at + 4]}
    at = at + 4
  end
  local when = now
  if pause > 0 and pauses[pause] > now then when = pauses[pause] end
  local never = false
  local short = when > now
  for i = 1, nitems do
    local x, need = items[i][1], items[i][2]
    local free = limit[x] - w[x].used - w[x].ext
    if blocked[x] ~= nil or free < need then
      short = true
      local at_x = blocked[x]
      if at_x == nil then
        if need > limit[x] then at_x = -1
        else at_x = frees_at(KEYS[2 * x], KEYS[2 * x + 1], need - free, w[x].ext, w[x].extu) end
        blocked[x] = at_x
      end
      if at_x == -1 then never = true elseif at_x > when then when = at_x end
      if waiter then
        w[x].wu, w[x].wh = now + wait_us, host
        local set = w[x].set
        set[#set + 1] = 'wu'
        set[#set + 1] = w[x].wu
        set[#set + 1] = 'wh'
        set[#set + 1] = host
        w[x].dirty = true
      end
    end
  end
  if short then
    if never then when = -1 end
    results[a] = {0, when}
  else
    local grants = {}
    for i = 1, nitems do
      local x, need, want, id = items[i][1], items[i][2], items[i][3], items[i][4]
      local win = w[x]
      local grant = math.min(want, limit[x] - win.used - win.ext)
      if win.wu > now and win.wh ~= host then grant = need end
      if win.wh == host and win.wu > 0 then  -- this host's own waiter is served
        win.wu = 0
        win.set[#win.set + 1] = 'wu'
        win.set[#win.set + 1] = 0
      end
      if grant < need then grant = need end
      if grant > 0 then
        win.zadd[#win.zadd + 1] = now + lease_us + span[x]
        win.zadd[#win.zadd + 1] = id
        win.set[#win.set + 1] = 'a:' .. id
        win.set[#win.set + 1] = grant
        win.used = win.used + grant
        win.dirty = true
      end
      grants[i] = grant
    end
    results[a] = {1, grants}
  end
end
local used = {}
for i = 1, nwin do
  save(KEYS[2 * i], KEYS[2 * i + 1], w[i], now, ttl[i])
  used[i] = w[i].used
end
return {'ok', now, paused, used, results}
