-- v5 presence shared by every instance (docs/redis.md, "v5 presence"). Keys, all under
-- <prefix>v5: (Node 0.4.0 processes never read them):
--   v5:instances    zset  instance uid -> unix time its entries stop counting
--   v5:users:<uid>  set   users that instance counts online, plus the marker '-'
--   v5:watch:<uid>  hash  watched user -> comma-joined watching users on that instance
--   v5:online       set   users announced online (online on some live instance)
--   v5:lastseen     zset  user -> unix time last seen (30 days, 200 000 entries at most)
-- ARGV[1] = prefix, ARGV[2] = operation:
--   get,  users...                  -> per user: -1 unknown, else seconds since seen (0 online)
--   seen, (user, unix time)...      -> 0; keeps the newer of the stored and the given time
--   sync, uid, grace, key_ttl, full, n_add, users..., n_rem, (user, seen at)...,
--         n_watch, (user, watchers)...
--       applies this instance's changes (all of its state when full = 1), renews its entry
--       until now + grace, ages out every instance past its time, and returns
--       {resync, user, 1|0, watchers, ...}: each user whose online state changed across all
--       instances, announced by this caller only (the script runs atomically); resync = 1
--       when this instance's set was missing (Redis lost it, or it was aged out) and the
--       caller must send its whole state.
if redis.replicate_commands then redis.replicate_commands() end
local P, op = ARGV[1], ARGV[2]
local now = tonumber(redis.call('TIME')[1])
local kinst, konline, kseen = P .. 'v5:instances', P .. 'v5:online', P .. 'v5:lastseen'
local MAX_AGE, MAX_SEEN = 30 * 86400, 200000

local function seen(u, at)
  local cur = redis.call('ZSCORE', kseen, u)
  if (not cur) or tonumber(cur) < at then
    redis.call('ZADD', kseen, at, u)
  end
end

if op == 'get' then
  local out = {}
  for i = 3, #ARGV do
    local u = ARGV[i]
    if redis.call('SISMEMBER', konline, u) == 1 then
      out[#out + 1] = 0
    else
      local s = redis.call('ZSCORE', kseen, u)
      if s and now - tonumber(s) <= MAX_AGE then
        out[#out + 1] = math.max(0, now - tonumber(s))
      else
        out[#out + 1] = -1
      end
    end
  end
  return out
end

if op == 'seen' then
  for i = 3, #ARGV - 1, 2 do
    seen(ARGV[i], math.min(tonumber(ARGV[i + 1]), now))
  end
  return 0
end

if op ~= 'sync' then
  return redis.error_reply('ERR presence script: unknown operation')
end
local uid, grace, key_ttl, full = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local kusers, kwatch = P .. 'v5:users:' .. uid, P .. 'v5:watch:' .. uid
-- user -> the time it was last seen, should it go offline now
local check = {}
local resync = 0
if redis.call('SISMEMBER', kusers, '-') == 0 and not full then
  resync = 1
end
if full then
  for _, u in ipairs(redis.call('SMEMBERS', kusers)) do
    if u ~= '-' then check[u] = now end
  end
  redis.call('DEL', kusers, kwatch)
end
redis.call('SADD', kusers, '-')
local i = 7
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('SADD', kusers, ARGV[i])
  check[ARGV[i]] = now
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('SREM', kusers, ARGV[i])
  check[ARGV[i]] = math.min(tonumber(ARGV[i + 1]), now)
  i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', kwatch, ARGV[i])
  else
    redis.call('HSET', kwatch, ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
redis.call('ZADD', kinst, now + grace, uid)
redis.call('EXPIRE', kusers, key_ttl)
redis.call('EXPIRE', kwatch, key_ttl)

-- Instances past their time (killed, or cut off): their users count as gone since their
-- last renewal.
local recheck = false
local dead = redis.call('ZRANGEBYSCORE', kinst, '-inf', '(' .. now, 'WITHSCORES')
for j = 1, #dead, 2 do
  local d, at = dead[j], math.max(0, tonumber(dead[j + 1]) - grace)
  local kd = P .. 'v5:users:' .. d
  if redis.call('EXISTS', kd) == 0 then
    recheck = true
  end
  for _, u in ipairs(redis.call('SMEMBERS', kd)) do
    if u ~= '-' and not check[u] then check[u] = at end
  end
  redis.call('DEL', kd, P .. 'v5:watch:' .. d)
  redis.call('ZREM', kinst, d)
end
if recheck then
  -- A dead instance's set expired before anyone aged it out: check every announced user.
  for _, u in ipairs(redis.call('SMEMBERS', konline)) do
    if not check[u] then check[u] = now end
  end
end

local live = redis.call('ZRANGEBYSCORE', kinst, now, '+inf')
local out = {resync}
for u, at in pairs(check) do
  local on = false
  for _, l in ipairs(live) do
    if redis.call('SISMEMBER', P .. 'v5:users:' .. l, u) == 1 then
      on = true
      break
    end
  end
  local was = redis.call('SISMEMBER', konline, u) == 1
  if on ~= was then
    if on then
      redis.call('SADD', konline, u)
    else
      redis.call('SREM', konline, u)
      seen(u, at)
    end
    local watchers = {}
    for _, l in ipairs(live) do
      local w = redis.call('HGET', P .. 'v5:watch:' .. l, u)
      if w then watchers[#watchers + 1] = w end
    end
    out[#out + 1] = u
    out[#out + 1] = on and 1 or 0
    out[#out + 1] = table.concat(watchers, ',')
  end
end

redis.call('ZREMRANGEBYSCORE', kseen, '-inf', '(' .. (now - MAX_AGE))
local card = redis.call('ZCARD', kseen)
if card > MAX_SEEN then
  redis.call('ZREMRANGEBYRANK', kseen, 0, card - MAX_SEEN - 1)
end
return out
