-- Backlog of several channels in one round trip (docs/redis.md).
-- ARGV: prefix, after (13-byte id), limit, max_bytes, specs (17 bytes per receiver as in
-- publish.lua)
-- Returns {more, value...}: the stored OutgoingMessage values newer than `after`, ascending by
-- id, each once, skipping expired ones, at most `limit` of them and no more than fit in
-- `max_bytes` (the first one always), and more = 1 when a further stored message was left
-- for the next read. Each value's size is read with STRLEN before it is fetched, so one read
-- never copies much more than max_bytes out of Redis.
local prefix, after = ARGV[1], ARGV[2]
local limit, max_bytes, specs = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
-- Both sets of every id are read, whatever the receiver's kind: a message addressed to an id
-- as private still reaches a subscriber holding it as a public id (as with the embedded store).
local keys, done = {}, {}
for j = 1, #specs, 17 do
  local id = specs:sub(j + 1, j + 16)
  if not done[id] then
    done[id] = true
    keys[#keys + 1] = prefix .. 'channel:messages:' .. id
    keys[#keys + 1] = prefix .. 'pubchannel:messages:' .. id
  end
end
local seen, ids, epochs, counters = {}, {}, {}, {}
for _, key in ipairs(keys) do
  -- redis.pcall: a key of another type (junk) is skipped, not an error that fails every
  -- backlog read of this subscriber.
  local got = redis.pcall('ZRANGEBYLEX', key, '(' .. after, '+')
  if type(got) ~= 'table' or got.err then got = {} end
  for _, id in ipairs(got) do
    if not seen[id] and #id == 13 then
      seen[id] = true
      ids[#ids + 1] = id
      -- Numeric sort keys: Lua compares strings with strcoll, not byte by byte.
      local e, c = 0, 0
      for i = 1, 5 do
        local b = id:byte(i)
        e = e * 100 + math.floor(b / 16) * 10 + b % 16
      end
      for i = 6, 13 do
        local b = id:byte(i)
        c = c * 100 + math.floor(b / 16) * 10 + b % 16
      end
      epochs[id], counters[id] = e, c
    end
  end
end
table.sort(ids, function(x, y)
  if epochs[x] ~= epochs[y] then return epochs[x] < epochs[y] end
  return counters[x] < counters[y]
end)
-- out[1] is `more`; the values follow.
local out, n, bytes, more = {0}, 0, 0, 0
for _, id in ipairs(ids) do
  local key = prefix .. 'message:' .. id
  -- 0 for an expired (missing) message; an error table for a key of another type.
  local len = redis.pcall('STRLEN', key)
  if type(len) == 'number' and len > 0 then
    if n >= limit or (n > 0 and bytes + len > max_bytes) then
      more = 1
      break
    end
    local v = redis.pcall('GET', key)
    if type(v) == 'string' then
      n = n + 1
      bytes = bytes + #v
      out[n + 1] = v
    end
  end
end
out[1] = more
return out
