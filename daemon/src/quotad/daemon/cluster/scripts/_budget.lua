-- A budget of one period is a hash: 's:<host>' what that host has spent, 'h:<host>' what it
-- holds (reserved for requests in flight and a little ahead), both in nano-USD and both set
-- by that host only, as absolute totals; 'g:<host>' a ghost: what another host last knew of
-- a host that has not pushed its own totals since Redis restarted empty; 'cu' until when
-- some host was refused (hosts then keep no spare).

-- The most an amount may be (nano-USD: a billion USD, cluster/spend.py MAX_NANO): hosts count
-- no figure and no limit past it. A field that holds no amount from 0 to it (no quotad
-- writes one: a hash damaged or edited by hand, a buggy host) counts as that much, so that
-- it fills any budget, never less than what it stood for (read as 0, NaN or below 0, it let
-- every other host spend past the limit).
local MAX_AMOUNT = 1e18
-- Sums are told the hosts at most this much (under 2^63: a Lua number past it becomes a
-- negative integer in the reply); past MAX_AMOUNT they fill any budget all the same.
local MAX_REPLY = 4e18

local function amount(value)
  local n = tonumber(value)
  if n ~= nil and n >= 0 and n <= MAX_AMOUNT then return n end  -- NaN fails both
  return nil
end

-- What a host writes of an amount it was sent or made (within MAX_AMOUNT: read back as one).
local function kept(n)
  return math.min(n, MAX_AMOUNT)
end

-- {others, fleet spent, fleet held, contended until, my spent, my held, {host, spent + held,
-- ...} of the other hosts (ghosts included), the first field of another host that holds no
-- amount as 'field=value' ('' when none)} of one budget; sums at most MAX_REPLY.
local function tally(key, me)
  local flat = redis.call('HGETALL', key)
  local spent, held, ghosts = {}, {}, {}
  local contended = 0
  local damaged = ''
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    local kind, who = string.sub(field, 1, 2), string.sub(field, 3)
    if kind == 's:' or kind == 'h:' or kind == 'g:' then
      local n = amount(value)
      if n == nil then
        n = MAX_AMOUNT
        if damaged == '' and who ~= me then  -- this host's own: overwritten by this call
          damaged = string.sub(field .. '=' .. value, 1, 200)
        end
      end
      if kind == 's:' then spent[who] = n
      elseif kind == 'h:' then held[who] = n
      else ghosts[who] = n end
    elseif field == 'cu' then contended = num(value) end
  end
  local others, fleet_spent, fleet_held = 0, 0, 0
  local each = {}
  for who, _ in pairs(held) do  -- a host's hold counts even with no spent beside it
    if spent[who] == nil then spent[who] = 0 end
  end
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
  return math.min(others, MAX_REPLY), math.min(fleet_spent, MAX_REPLY),
    math.min(fleet_held, MAX_REPLY), contended, spent[me] or 0, held[me] or 0, each, damaged
end
