-- Push this host's totals: what it has spent (absolute, from its ledger, so a push sent
-- twice or replayed after an outage counts once) and what it still holds. A sync never
-- raises spent + held above what the host had (only budget_borrow.lua may, within the
-- limit), except a restore: after Redis restarted empty a host puts back what it held, and
-- ghosts of the other hosts it last knew of (each kept until that host pushes its own).
-- Also this host's spend per day, app and model for `quotad spend --fleet`.
-- KEYS: budget keys, then spend day keys. ARGV: host, restore (1/0), budget count, per
-- budget: spent, held, ttl_s, ghost count, per ghost: host, spent + held; then per day key:
-- ttl_s, field count, per field: field, value.
-- Reply: {now, {per budget: {held, fleet spent, fleet held, contended until, {host, spent +
-- held, ...} of the others, a field that holds no amount (as budget_borrow.lua)}}} (ghosts
-- this call sets count in fleet held at once, in the list from the next reply).
local now = now_us()
local host, restore, nb = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local at = 3
local out = {}
for b = 1, nb do
  local key = KEYS[b]
  local spent, held, ttl, nghost = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[at + 3],
    tonumber(ARGV[at + 4])
  at = at + 4
  local others, fleet_spent, fleet_held, contended, my_spent, my_held, each, damaged =
    tally(key, host)
  spent = kept(spent)
  if restore then
    held = kept(held)
  else
    held = math.max(0, math.min(held, my_spent + my_held - spent, MAX_AMOUNT))
  end
  redis.call('HSET', key, 's:' .. host, spent, 'h:' .. host, held)
  redis.call('HDEL', key, 'g:' .. host)
  fleet_spent = fleet_spent - my_spent + spent
  fleet_held = fleet_held - my_held + held
  for g = 1, nghost do
    local who, combined = ARGV[at + 1], kept(tonumber(ARGV[at + 2]))
    at = at + 2
    if restore and who ~= host and redis.call('HEXISTS', key, 's:' .. who) == 0 then
      local old = num(redis.call('HGET', key, 'g:' .. who))
      if combined > old then
        redis.call('HSET', key, 'g:' .. who, combined)
        fleet_held = fleet_held + combined - old
      end
    end
  end
  redis.call('EXPIRE', key, ttl)
  out[b] = {held, math.min(fleet_spent, MAX_REPLY), math.min(fleet_held, MAX_REPLY), contended,
    each, damaged}
end
for d = nb + 1, #KEYS do
  local ttl, nfields = ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 2
  for f = 1, nfields do
    redis.call('HSET', KEYS[d], ARGV[at + 1], ARGV[at + 2])
    at = at + 2
  end
  redis.call('EXPIRE', KEYS[d], ttl)
end
return {now, out}
