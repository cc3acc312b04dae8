-- GET (or BENCH_METHOD) BENCH_PATH with the token in a header; tokens rotate per request.
-- With BENCH_PATHS (a file, one path per line) the path rotates per request as well.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "common"

local tokens, index, method, paths, path_index, header

function init(args)
   tokens = load_tokens()
   -- Threads start at different places in the list, so no two send the same token together.
   index = first_token(tokens)
   method = os.getenv("BENCH_METHOD") or "GET"
   paths = load_lines(os.getenv("BENCH_PATHS"), os.getenv("BENCH_PATH"))
   path_index = math.floor((id - 1) * #paths / 2)
   header = os.getenv("BENCH_HEADER") or "token"
end

function request()
   index = index % #tokens + 1
   path_index = path_index % #paths + 1
   local headers = {}
   if tokens[index] ~= "" then headers[header] = tokens[index] end
   return wrk.format(method, paths[path_index], headers, nil)
end
