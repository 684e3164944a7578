-- Catch-up after a pub/sub gap: what backlog.lua reads, with the receivers of every message
-- (docs/redis.md, "Catch-up after a pub/sub gap").
-- ARGV: prefix, after (13-byte id), limit, max_bytes, specs (17 bytes per receiver as in
-- publish.lua)
-- Returns {more, value, ids, value, ids...}: each stored OutgoingMessage newer than `after`,
-- ascending by id, each once, skipping expired ones, then the 16-byte ids (concatenated) of
-- the receivers asked for that hold it; bounded by `limit` and `max_bytes` as in backlog.lua.
local prefix, after = ARGV[1], ARGV[2]
local limit, max_bytes, specs = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local done = {}
local holders, ids, epochs, counters = {}, {}, {}, {}
for j = 1, #specs, 17 do
  local ch = specs:sub(j + 1, j + 16)
  if not done[ch] then
    done[ch] = true
    for _, set in ipairs({'channel:messages:', 'pubchannel:messages:'}) do
      local got = redis.pcall('ZRANGEBYLEX', prefix .. set .. ch, '(' .. after, '+')
      if type(got) ~= 'table' or got.err then got = {} end
      for _, id in ipairs(got) do
        if #id == 13 then
          local h = holders[id]
          if not h then
            h = {}
            holders[id] = h
            ids[#ids + 1] = id
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
          if not h[ch] then
            h[ch] = true
            h[#h + 1] = ch
          end
        end
      end
    end
  end
end
table.sort(ids, function(x, y)
  if epochs[x] ~= epochs[y] then return epochs[x] < epochs[y] end
  return counters[x] < counters[y]
end)
local out, n, bytes, more = {0}, 0, 0, 0
for _, id in ipairs(ids) do
  local key = prefix .. 'message:' .. id
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
      out[#out + 1] = v
      out[#out + 1] = table.concat(holders[id])
    end
  end
end
out[1] = more
return out
