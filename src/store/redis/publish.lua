-- Publish a batch atomically: mint ids, store, index, announce (docs/redis.md).
-- ARGV: prefix, uid, last_epoch, last_counter, n, channel_ttl, cap, deadline,
--       then per message: ttl, rest, receivers, specs
--   deadline  = Redis TIME in microseconds after which the script must not publish: the
--               instance answers 503 soon after it (docs/redis.md, "Publish deadline")
--   rest      = the OutgoingMessage protobuf without its id field
--   receivers = the IPCMessage `receivers` fields, pre-encoded
--   specs     = 17 bytes per receiver: 'c' (private) or 'p' (public), then the 16-byte id
-- Returns {epoch, first counter}, or {0, late by µs} when the deadline had passed: then
-- nothing was written or announced.
-- Redis 3.2 to 4 replicate a script verbatim and then refuse writes after TIME; this asks
-- for effects replication (the default, and a no-op, since Redis 5).
if redis.replicate_commands then redis.replicate_commands() end
local prefix, uid = ARGV[1], ARGV[2]
local last_epoch, last_counter = tonumber(ARGV[3]), tonumber(ARGV[4])
local n, channel_ttl, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local deadline = tonumber(ARGV[8])
if #ARGV ~= 8 + 4 * n then
  return redis.error_reply('ERR publish script: bad argument count')
end
-- First, before any write: a publish that reaches Redis after its deadline (Redis frozen,
-- or too slow) may already have been answered 503, and its retry would publish it twice.
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
if now_us > deadline then
  return {0, now_us - deadline}
end

local kstart = prefix .. 'server:startdate'
local kcounter = prefix .. 'server:messagecounter'
-- Epochs have 10 digits. Counters stay below 2^53: Lua numbers are doubles, and above that
-- `INCRBY`'s answer and the "%016d" below would no longer be exact.
local EPOCH_LIMIT, COUNTER_LIMIT = 1e10, 2 ^ 53
-- The value of an id key, or nil when it is not one this script could have written: missing,
-- another type (redis.pcall, not an error), or a string `INCRBY` rejects or a 26-digit id
-- cannot hold ("1.5", "0x10", "-7", "1e3", 11 digits). Any of these starts a new epoch instead
-- of failing every publish, or of minting a malformed id.
local function id_key(key, limit)
  local v = redis.pcall('GET', key)
  if type(v) ~= 'string' or not (v == '0' or v:match('^[1-9]%d*$')) or #v > 16 then
    return nil
  end
  v = tonumber(v)
  if v >= limit then return nil end
  return v
end
local epoch = id_key(kstart, EPOCH_LIMIT)
local counter = id_key(kcounter, COUNTER_LIMIT)
-- Regression protection: a missing key (flush, eviction, restart without persistence) or a
-- value below what this instance has already seen starts a new epoch above everything seen.
-- So does a counter without room for the batch.
if not epoch or not counter or epoch < last_epoch
    or (epoch == last_epoch and counter < last_counter)
    or counter + n >= COUNTER_LIMIT then
  local e = tonumber(now[1])
  if epoch and epoch + 1 > e then e = epoch + 1 end
  if last_epoch + 1 > e then e = last_epoch + 1 end
  if e >= EPOCH_LIMIT then
    return redis.error_reply('ERR publish script: no epoch left above ' .. string.format('%d', e - 1))
  end
  redis.call('SET', kstart, string.format('%d', e))
  -- The new epoch alone keeps this instance's ids unique, so a usable counter goes on
  -- from where it is: a Node 0.4.0 process on this Redis keeps its old epoch and only
  -- INCRs, and a counter reset to 0 would make it mint its earlier ids a second time.
  if not counter or counter + n >= COUNTER_LIMIT then
    redis.call('SET', kcounter, '0')
  end
  epoch = e
end
local first = redis.call('INCRBY', kcounter, n) - n + 1

-- The 26 digits "%010d%016d" read as hex: two decimal digits per byte. The epoch's 5 bytes
-- are the same for the whole batch; the counter's 8 come from arithmetic on the (exact,
-- below 2^53) double, without string.format, which is most of a message's cost otherwise.
local function bcd(v, k)
  local b = {}
  for j = k, 1, -1 do
    local two = v % 100
    v = (v - two) / 100
    b[j] = (two - two % 10) / 10 * 16 + two % 10
  end
  return string.char(unpack(b))
end
local epoch_bytes = bcd(epoch, 5)
local function mid(c)
  return epoch_bytes .. bcd(c, 8)
end

local function varint(v)
  if v < 128 then return string.char(v) end
  if v < 16384 then return string.char(v % 128 + 128, (v - v % 128) / 128) end
  local t = {}
  while v >= 128 do
    t[#t + 1] = string.char(v % 128 + 128)
    v = math.floor(v / 128)
  end
  t[#t + 1] = string.char(v)
  return table.concat(t)
end

local entries, touched = {}, {}
local a = 9
for i = 0, n - 1 do
  local ttl, rest, receivers, specs = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  a = a + 4
  local id = mid(first + i)
  local om = '\10\13' .. id .. rest
  if ttl > 0 then
    redis.call('SET', prefix .. 'message:' .. id, om, 'EX', ttl)
    for j = 1, #specs, 17 do
      local set = (specs:sub(j, j) == 'p') and 'pubchannel:messages:' or 'channel:messages:'
      local key = prefix .. set .. specs:sub(j + 1, j + 16)
      -- A key of another type there is junk (no process writes one): replace it rather
      -- than fail every publish to this channel.
      if type(redis.pcall('ZADD', key, 0, id)) ~= 'number' then
        redis.call('DEL', key)
        redis.call('ZADD', key, 0, id)
      end
      touched[key] = true
    end
  end
  -- IPCMessage { receivers = 1; outgoingMessageId = 2; outgoingMessage = 3 }
  local ipc = receivers .. '\18\13' .. id .. '\26' .. varint(#om) .. om
  entries[#entries + 1] = '\10' .. varint(#ipc) .. ipc
end
for key in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
  -- Only a set without a TTL gets one (never refreshed). `EXPIRE … NX` would need Redis 7;
  -- Redis 6 (Ubuntu 22.04, EL9) rejects it, which failed every publish after its writes.
  if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, channel_ttl) end
end
-- NotificationBatch { notifications = 1 } -> Notification { ipcMessages = 1 } -> IPCMessages
local messages = table.concat(entries)
local notification = '\10' .. varint(#messages) .. messages
redis.call('PUBLISH', prefix .. 'pushserver:' .. uid, '\10' .. varint(#notification) .. notification)
return {epoch, first}
