-- POST /auth/oauth/token, grant_type=refresh_token, strict rotation: a refresh token is
-- good once, so each connection follows a family of its own. BENCH_REFRESH has one refresh
-- token per line (a family each; as many as connections); a thread keeps its families'
-- unspent tokens in a queue: request() takes one, response() puts the answer's new one
-- back (a thread's connections share the queue; each has one request out at a time).
-- With BENCH_SAVE, each new access token is written to BENCH_SAVE.<thread id>.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "oidc"

local queue, head, tail, client, save

function init(args)
   queue = my_lines(os.getenv("BENCH_REFRESH"))
   head, tail = 1, #queue
   client = os.getenv("BENCH_CLIENT_ID")
   local file = os.getenv("BENCH_SAVE")
   if file and file ~= "" then
      save = assert(io.open(file .. "." .. id, "w"))
      save:setvbuf("full", 65536)  -- flushed by exit() once wrk is done
   end
end

local function body(token)
   return form_post({
      {"grant_type", "refresh_token"}, {"refresh_token", token}, {"client_id", client},
   })
end

function request()
   if checking() then return body("not-sent") end
   if head > tail then
      short = short + 1  -- a family's answer was lost (an error): nothing left to send
      return body("none-left")
   end
   local token = queue[head]
   queue[head] = nil
   head = head + 1
   sent = sent + 1
   return body(token)
end

function response(status, headers, body)
   if status ~= 200 then return end
   local refresh = body:match('"refresh_token":%s*"([^"]+)"')
   if refresh then
      tail = tail + 1
      queue[tail] = refresh
   end
   if save then
      local access = body:match('"access_token":%s*"([^"]+)"')
      if access then
         save:write(access, "\n")
         kept = kept + 1
      end
   end
end
