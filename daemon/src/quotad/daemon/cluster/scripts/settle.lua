-- Put this host's own entries of windows as they now are: absolute amounts, so a put sent
-- twice (a retry, a re-sync after Redis restarted empty) counts once.
-- KEYS: per window its log and state.
-- ARGV: channel, window count, per window: ttl_ms, op count, per op: entry, amount, expiry_us.
-- An op with amount 0, or an expiry already past, removes the entry: that is how a lease is
-- returned (its open entry removed, what was used put into a bucket of this host's closed
-- admissions at the time the last of them leaves the window). When a window is waited on,
-- a change there is published on the channel ('freed <state key>'), so waiters ask again.
-- Reply: {now, {used per window}, {freed per window}}.
local channel = ARGV[1]
local nwin = tonumber(ARGV[2])
local now = now_us()
local at = 2
local used_out, freed_out = {}, {}
for w = 1, nwin do
  local log, st = KEYS[2 * w - 1], KEYS[2 * w]
  local ttl, nops = ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 2
  local used = expire(log, st, now)
  local before = used
  for o = 1, nops do
    local entry, amount, expiry = ARGV[at + 1], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
    at = at + 3
    local field = 'a:' .. entry
    local old = num(redis.call('HGET', st, field))
    if amount <= 0 or expiry <= now then
      if redis.call('ZREM', log, entry) == 1 then used = used - old end
      redis.call('HDEL', st, field)
    else
      if redis.call('ZSCORE', log, entry) == false then old = 0 end
      redis.call('ZADD', log, expiry, entry)
      redis.call('HSET', st, field, amount)
      used = used + amount - old
    end
  end
  if used < 0 then used = 0 end
  redis.call('HSET', st, 'used', used)
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', st, ttl)
  if nops > 0 and num(redis.call('HGET', st, 'wu')) > now then
    redis.call('PUBLISH', channel, 'freed ' .. st)
  end
  used_out[w] = used
  freed_out[w] = before - used
end
return {now, used_out, freed_out}
