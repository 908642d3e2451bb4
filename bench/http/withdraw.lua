-- (d) POST /v1/wallets/<hot>/withdrawals of 100,000 (fee 600) from the one hot wallet (line 1 of
-- the ids file), which every connection hits, each with a fresh Idempotency-Key.
-- wrk -t2 -c32 -d15s -H 'Authorization: Bearer <jwt>' -s bench/http/withdraw.lua \
--   http://127.0.0.1:8000 -- <run id> <wallet ids file>
package.path = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "?.lua;" .. package.path
local common = require("common")

local path

function init(args)
  path = "/v1/wallets/" .. common.init(args)[1] .. "/withdrawals"
end

function request()
  return common.post(path, '{"amount":100000}')
end
