-- Shared by the OpenID Connect token scripts (oidc_code.lua, oidc_refresh.lua): the token
-- endpoint's form body, each thread's share of a list, and per-thread counts written to
-- BENCH_STATS (JSON) once wrk is done, besides common.lua's summary on stdout.
--   BENCH_PATH       the token endpoint (/auth/oauth/token)
--   BENCH_CLIENT_ID  a public client (no secret; PKCE for codes)
--   BENCH_THREADS    wrk's thread count: thread k of n takes lines k, k + n, k + 2n, ...
--   BENCH_STATS      file for {"sent":..,"short":..,"kept":..} summed over the threads
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "common"

local all = {}
local common_setup, common_done = setup, done

function setup(thread)
   common_setup(thread)
   table.insert(all, thread)
end

-- This thread's lines of `file`: every n-th, starting at its id.
function my_lines(file)
   local lines, mine = load_lines(file), {}
   local n = tonumber(os.getenv("BENCH_THREADS"))
   for i = id, #lines, n do mine[#mine + 1] = lines[i] end
   return mine
end

local function escape(value)
   return (value:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- An application/x-www-form-urlencoded POST of `fields` ({name, value} pairs, in order).
function form_post(fields)
   local parts = {}
   for _, field in ipairs(fields) do
      parts[#parts + 1] = field[1] .. "=" .. escape(field[2])
   end
   return wrk.format("POST", os.getenv("BENCH_PATH"),
                     {["Content-Type"] = "application/x-www-form-urlencoded"},
                     table.concat(parts, "&"))
end

-- Counts each script keeps as globals of its thread: sent (bodies taken from the list),
-- short (requests made with nothing left to send: a run that is not to be trusted),
-- kept (tokens written to BENCH_SAVE).
sent, short, kept = 0, 0, 0

-- wrk calls request() once on its first thread before any connection opens, to check
-- what it returns (script_verify_request); that call must not use a code or a token up.
checked = false
function checking()
   if id == 1 and not checked then
      checked = true
      return true
   end
   return false
end

function done(summary, latency, requests)
   common_done(summary, latency, requests)
   local totals = {sent = 0, short = 0, kept = 0}
   for _, thread in ipairs(all) do
      for name in pairs(totals) do totals[name] = totals[name] + (thread:get(name) or 0) end
   end
   local file = assert(io.open(os.getenv("BENCH_STATS"), "w"))
   file:write(string.format('{"sent":%d,"short":%d,"kept":%d}\n',
                            totals.sent, totals.short, totals.kept))
   file:close()
end
