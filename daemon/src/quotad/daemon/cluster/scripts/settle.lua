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
for i = 1, nwin do
  local log, st = KEYS[2 * i - 1], KEYS[2 * i]
  local ttl, nops = ARGV[at + 1], tonumber(ARGV[at + 2])
  local w = load(st, now)
  expire(log, st, w, now)
  local before = w.used
  local fields = {}
  for o = 1, nops do fields[o] = 'a:' .. ARGV[at + 3 * o] end
  local current = {}
  if nops > 0 then
    local amounts = redis.call('HMGET', st, unpack(fields))
    for o = 1, nops do current[ARGV[at + 3 * o]] = num(amounts[o]) end
  end
  local gone, gone_fields = {}, {}
  for o = 1, nops do
    local entry, amount, expiry = ARGV[at + 3 * o], tonumber(ARGV[at + 3 * o + 1]),
      tonumber(ARGV[at + 3 * o + 2])
    local old = current[entry]
    if amount <= 0 or expiry <= now then
      if old > 0 then
        gone[#gone + 1] = entry
        gone_fields[#gone_fields + 1] = 'a:' .. entry
        w.used = w.used - old
      end
      current[entry] = 0
    else
      w.zadd[#w.zadd + 1] = expiry
      w.zadd[#w.zadd + 1] = entry
      w.set[#w.set + 1] = 'a:' .. entry
      w.set[#w.set + 1] = amount
      w.used = w.used + amount - old
      current[entry] = amount
    end
    w.dirty = true
  end
  at = at + 2 + 3 * nops
  if #gone > 0 then
    redis.call('ZREM', log, unpack(gone))
    redis.call('HDEL', st, unpack(gone_fields))
    w.emptied = redis.call('ZCARD', log) == 0
  end
  if w.used < 0 then w.used = 0 end
  save(log, st, w, now, ttl)
  if nops > 0 and w.wu > now then
    redis.call('PUBLISH', channel, 'freed ' .. st)
  end
  used_out[i] = w.used
  freed_out[i] = before - w.used
end
return {now, used_out, freed_out}
