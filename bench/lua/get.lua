-- GET (or BENCH_METHOD) BENCH_PATH with the token in a header; tokens rotate per request.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "common"

local tokens, index, method, path, header

function init(args)
   tokens = load_tokens()
   -- Threads start at different places in the list, so no two send the same token together.
   index = math.floor((id - 1) * #tokens / 2)
   method = os.getenv("BENCH_METHOD") or "GET"
   path = os.getenv("BENCH_PATH")
   header = os.getenv("BENCH_HEADER") or "token"
end

function request()
   index = index % #tokens + 1
   local headers = {}
   if tokens[index] ~= "" then headers[header] = tokens[index] end
   return wrk.format(method, path, headers, nil)
end
