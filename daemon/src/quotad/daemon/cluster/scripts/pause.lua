-- A provider answered 429 with retry-after: pause the target on every host (the pause only
-- ever lengthens), and tell the hosts now. ms = 0 lifts the pause (quotad target reset).
-- KEYS: pause key. ARGV: channel, target, ms. Reply: {now, paused_until (0: none)}.
local now = now_us()
local ms = tonumber(ARGV[3])
if ms <= 0 then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[1], 'pause 0 ' .. ARGV[2])
  return {now, 0}
end
local untilp = now + ms * 1000
local old = num(redis.call('GET', KEYS[1]))
if untilp <= old then return {now, old} end
redis.call('SET', KEYS[1], untilp, 'PX', ms)
redis.call('PUBLISH', ARGV[1], 'pause ' .. string.format('%.0f', untilp) .. ' ' .. ARGV[2])
return {now, untilp}
