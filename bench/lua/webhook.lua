-- POST /webhook as Orthanc's plugin sends it (docs/PROTOCOLS.md); tokens rotate per request.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "common"

local tokens, index, prefix, suffix

function init(args)
   tokens = load_tokens()
   index = first_token(tokens)
   local uri = os.getenv("BENCH_PATH")
   local uid = os.getenv("BENCH_STUDY_UID")
   prefix = '{"method":"get","level":"study","dicom-uid":"' .. uid .. '","uri":"' .. uri ..
            '","token-key":"token","token-value":"'
   suffix = '","ip":"127.0.0.1"}'
end

function request()
   index = index % #tokens + 1
   return wrk.format("POST", "/webhook", {["Content-Type"] = "application/json"},
                     prefix .. tokens[index] .. suffix)
end
