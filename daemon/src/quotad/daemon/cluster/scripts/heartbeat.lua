-- A host says it is alive (and its load), learns the hosts seen recently and the fleet's
-- epoch. The epoch is created here when missing (a new fleet, or a Redis restarted empty),
-- with a re-sync window during which hosts push their own state back and borrow nothing; a
-- host back from an outage (reopen) opens one again (or makes the open one last until at
-- least resync_us from now), since what the hosts admitted meanwhile is not in the log yet.
-- KEYS: hosts (sorted set host -> last seen), loads (hash host -> load), epoch.
-- ARGV: host, load, host_ttl_us, new epoch id, resync_us, forget_us, reopen (0 or 1).
-- Reply: {now, {epoch id, created, resync_until}, {host, last seen, load, ...}}.
local now = now_us()
local host = ARGV[1]
redis.call('ZADD', KEYS[1], now, host)
redis.call('HSET', KEYS[2], host, ARGV[2])
local forget = now - tonumber(ARGV[6])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', forget, 'LIMIT', 0, CHUNK)
if #gone > 0 then
  redis.call('HDEL', KEYS[2], unpack(gone))
  redis.call('ZREM', KEYS[1], unpack(gone))
end
local epoch = redis.call('HMGET', KEYS[3], 'id', 'created', 'resync_until')
if not epoch[1] then
  epoch = {ARGV[4], now, now + tonumber(ARGV[5])}
  redis.call('HSET', KEYS[3], 'id', epoch[1], 'created', epoch[2], 'resync_until', epoch[3])
elseif ARGV[7] == '1' then
  local reopened = now + tonumber(ARGV[5])
  if reopened > num(epoch[3]) then
    epoch[3] = reopened
    redis.call('HSET', KEYS[3], 'resync_until', reopened)
  end
end
local seen = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[3]), '+inf', 'WITHSCORES')
local hosts = {}
for i = 1, #seen, 2 do
  hosts[#hosts + 1] = seen[i]
  hosts[#hosts + 1] = tonumber(seen[i + 1])
  hosts[#hosts + 1] = redis.call('HGET', KEYS[2], seen[i]) or ''
end
return {now, {epoch[1], num(epoch[2]), num(epoch[3])}, hosts}
