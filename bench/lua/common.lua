-- Shared by the bench scripts: per-thread token lists and a JSON summary on stdout.
-- Settings come from the environment (wrk passes no arguments to Lua here):
--   BENCH_TOKENS   file, one token per line (each request takes the next one: cold caches)
--   BENCH_OFFSET   where in BENCH_TOKENS this run starts (bench/run.py: where the last one
--                  stopped, so a run meets tokens unseen for a whole cycle of the file)
--   BENCH_TOKEN    one token for every request (warm caches)
--   BENCH_PATHS    file, one path per line (get.lua: each request takes the next one)
--   BENCH_METHOD, BENCH_PATH, BENCH_HEADER (name of the token header, default "token")
local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

-- The non-empty lines of `file`, or { single } when no file is given.
function load_lines(file, single)
   local list = {}
   if file and file ~= "" then
      for line in io.lines(file) do
         if #line > 0 then list[#list + 1] = line end
      end
   else
      list[1] = single or ""
   end
   return list
end

function load_tokens()
   return load_lines(os.getenv("BENCH_TOKENS"), os.getenv("BENCH_TOKEN"))
end

-- Where this thread starts in `tokens`: threads half the list apart, moved on by BENCH_OFFSET.
function first_token(tokens)
   return math.floor((id - 1) * #tokens / 2) + tonumber(os.getenv("BENCH_OFFSET") or "0")
end

function done(summary, latency, requests)
   local non2xx = summary.errors.status
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"errors_status":%d,"errors_connect":%d,"errors_read":%d,' ..
      '"errors_write":%d,"errors_timeout":%d,"bytes":%d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      latency.max, non2xx, summary.errors.connect, summary.errors.read,
      summary.errors.write, summary.errors.timeout, summary.bytes))
end
