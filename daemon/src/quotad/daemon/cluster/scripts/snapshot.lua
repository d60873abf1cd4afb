-- What the fleet holds now, for status: per window its use and the external usage a
-- provider's headers report; and the pauses in force (a host that missed a published pause
-- learns it here).
-- KEYS: per window its log and state, then pause keys. ARGV: window count, pause count.
-- Reply: {now, {per window: {used, ext, extu}}, {paused_until per pause key}}.
local now = now_us()
local nwin, npause = tonumber(ARGV[1]), tonumber(ARGV[2])
local windows = {}
for w = 1, nwin do
  local log, st = KEYS[2 * w - 1], KEYS[2 * w]
  local win = load(st, now)
  expire(log, st, win, now)
  save(log, st, win, now, 0)
  windows[w] = {win.used, win.ext, win.extu}
end
local pauses = {}
for p = 1, npause do pauses[p] = num(redis.call('GET', KEYS[2 * nwin + p])) end
return {now, windows, pauses}
