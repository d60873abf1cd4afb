-- What the fleet holds now, for a host to fall back on if Redis goes away: per window its
-- use, external usage, and a profile of when its entries leave (amounts summed into K steps
-- of span_us / K, each at the step's end, so the profile never under-counts); and the
-- pauses in force (a host that missed a published pause learns it here).
-- KEYS: per window its log and state, then pause keys. ARGV: window count, K, pause count,
-- per window: span_us. Reply: {now, {per window: {used, ext, extu, {expiry, amount, ...}}},
-- {paused_until per pause key}}.
local now = now_us()
local nwin, steps, npause = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local windows = {}
for w = 1, nwin do
  local log, st = KEYS[2 * w - 1], KEYS[2 * w]
  local span = tonumber(ARGV[3 + w])
  local step = math.max(1, math.ceil(span / steps))
  local win = load(st, now)
  expire(log, st, win, now)
  save(log, st, win, now, 0)
  local used, ext, extu = win.used, win.ext, win.extu
  local sums, latest, beyond = {}, 0, 0
  each_entry(log, st, function(expires, amount)
    local left = expires - now
    local k = math.ceil(left / step)
    if k > steps then
      beyond = beyond + amount
      if left > latest then latest = left end
    else
      sums[k] = (sums[k] or 0) + amount
    end
  end)
  local profile = {}
  for k = 1, steps do
    if sums[k] then
      profile[#profile + 1] = now + k * step
      profile[#profile + 1] = sums[k]
    end
  end
  if beyond > 0 then
    profile[#profile + 1] = now + latest
    profile[#profile + 1] = beyond
  end
  windows[w] = {used, ext, extu, profile}
end
local pauses = {}
for p = 1, npause do pauses[p] = num(redis.call('GET', KEYS[2 * nwin + p])) end
return {now, windows, pauses}
