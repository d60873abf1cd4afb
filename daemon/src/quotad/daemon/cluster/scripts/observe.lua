-- A provider's rate-limit headers, seen by one host: `remaining` units left until `reset_us`
-- from now. When that is tighter than the fleet's own view, the difference counts as
-- external usage until then (never loosening the window beyond its limit).
-- KEYS: log, state. ARGV: limit, remaining, reset_us, ttl_ms.
-- Reply: {now, used, external, external_until}.
local now = now_us()
local w = load(KEYS[2], now)
expire(KEYS[1], KEYS[2], w, now)
local limit, remaining, reset = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if remaining < 0 then remaining = 0 end
if reset < 0 then reset = 0 end
local beyond = limit - w.used - remaining
if beyond > 0 then
  w.ext = math.min(limit, beyond)
  w.extu = now + reset
  w.set = {'ext', w.ext, 'extu', w.extu}
  w.dirty = true
end
save(KEYS[1], KEYS[2], w, now, ARGV[4])
if beyond > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
return {now, w.used, w.ext, w.extu}
