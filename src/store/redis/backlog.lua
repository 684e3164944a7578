-- Backlog of several channels in one round trip (docs/redis.md).
-- ARGV: prefix, after (13-byte id), limit, specs (17 bytes per receiver as in publish.lua)
-- Returns the stored OutgoingMessage values newer than `after`, ascending by id, each once,
-- skipping expired ones, at most `limit`.
local prefix, after, limit, specs = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
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
local out = {}
for _, id in ipairs(ids) do
  if #out >= limit then break end
  local v = redis.pcall('GET', prefix .. 'message:' .. id)
  if type(v) == 'string' then out[#out + 1] = v end
end
return out
