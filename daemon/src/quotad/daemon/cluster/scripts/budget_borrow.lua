-- Hold more of budgets, all or none: for each budget, this host's spent (its own total,
-- from its ledger) plus what it holds must stay within the limit beside every other host's
-- spent and held. The host then reserves its requests' maximum costs locally within what it
-- holds, with no round trip per request.
-- KEYS: epoch, then budget keys. ARGV: epoch id, host, contended_us, budget count, per
-- budget: limit, spent, min_hold, want_hold, ttl_s (all amounts nano-USD).
-- Reply: {'ok', now, {per budget: {held, fleet spent, fleet held, contended until, {host,
-- spent + held, ...} of the others, a field that holds no amount}}}, or
-- {'short', now, budget index, room for this host's hold, others' spent + held, a field that
-- holds no amount} (nothing written but 'cu'), or {'epoch', now, id} / {'resync', now, until}
-- as borrow.lua. A field that holds no amount is 'field=value' of the first one (counted as
-- MAX_AMOUNT, see _budget.lua), '' when none.
local now, refused = check_epoch(KEYS[1], ARGV[1])
if refused then return refused end
local host = ARGV[2]
local contended_us, nb = tonumber(ARGV[3]), tonumber(ARGV[4])
local plan = {}
for b = 1, nb do
  local at = 4 + 5 * (b - 1)
  local limit, spent = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local min_hold, want_hold, ttl = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4]), ARGV[at + 5]
  local key = KEYS[1 + b]
  local others, fleet_spent, fleet_held, contended, my_spent, my_held, each, damaged =
    tally(key, host)
  local room = limit - others - spent
  if room < min_hold then
    redis.call('HSET', key, 'cu', now + contended_us)
    return {'short', now, b, math.max(room, -MAX_REPLY), others, damaged}
  end
  local held = kept(math.max(min_hold, math.min(want_hold, room)))
  plan[b] = {key, kept(spent), held, ttl,
    fleet_spent - my_spent + spent, fleet_held - my_held + held, contended, each, damaged}
end
local out = {}
for b = 1, nb do
  local p = plan[b]
  redis.call('HSET', p[1], 's:' .. host, p[2], 'h:' .. host, p[3])
  redis.call('HDEL', p[1], 'g:' .. host)
  redis.call('EXPIRE', p[1], p[4])
  out[b] = {p[3], p[5], p[6], p[7], p[8], p[9]}
end
return {'ok', now, out}
