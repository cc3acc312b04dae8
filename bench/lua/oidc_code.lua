-- POST /auth/oauth/token, grant_type=authorization_code, as a public client with PKCE:
-- each request spends the next code of BENCH_CODES (one per line, single use, valid 60 s),
-- all made for one PKCE pair (BENCH_VERIFIER) and one BENCH_REDIRECT_URI.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "oidc"

local codes, index, client, verifier, redirect_uri

function init(args)
   codes = my_lines(os.getenv("BENCH_CODES"))
   index = 0
   client = os.getenv("BENCH_CLIENT_ID")
   verifier = os.getenv("BENCH_VERIFIER")
   redirect_uri = os.getenv("BENCH_REDIRECT_URI")
end

local function body(code)
   return form_post({
      {"grant_type", "authorization_code"}, {"code", code}, {"redirect_uri", redirect_uri},
      {"client_id", client}, {"code_verifier", verifier},
   })
end

function request()
   if checking() then return body("not-sent") end
   index = index + 1
   if index > #codes then
      short = short + 1
      return body("none-left")  -- refused (400): counted as an error, and as short
   end
   sent = sent + 1
   return body(codes[index])
end
