-- A budget of one period is a hash: 's:<host>' what that host has spent, 'h:<host>' what it
-- holds (reserved for requests in flight and a little ahead), both in nano-USD and both set
-- by that host only, as absolute totals; 'g:<host>' a ghost: what another host last knew of
-- a host that has not pushed its own totals since Redis restarted empty; 'cu' until when
-- some host was refused (hosts then keep no spare).

-- {others, fleet spent, fleet held, contended until, my spent, my held, {host, spent + held,
-- ...} of the other hosts (ghosts included)} of one budget.
local function tally(key, me)
  local flat = redis.call('HGETALL', key)
  local spent, held, ghosts = {}, {}, {}
  local contended = 0
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    local kind, who = string.sub(field, 1, 2), string.sub(field, 3)
    if kind == 's:' then spent[who] = num(value)
    elseif kind == 'h:' then held[who] = num(value)
    elseif kind == 'g:' then ghosts[who] = num(value)
    elseif field == 'cu' then contended = num(value) end
  end
  local others, fleet_spent, fleet_held = 0, 0, 0
  local each = {}
  for who, s in pairs(spent) do
    local h = held[who] or 0
    fleet_spent = fleet_spent + s
    fleet_held = fleet_held + h
    if who ~= me then
      others = others + s + h
      each[#each + 1] = who
      each[#each + 1] = s + h
    end
  end
  for who, g in pairs(ghosts) do
    if spent[who] == nil and who ~= me then
      others = others + g
      fleet_held = fleet_held + g
      each[#each + 1] = who
      each[#each + 1] = g
    end
  end
  return others, fleet_spent, fleet_held, contended, spent[me] or 0, held[me] or 0, each
end
