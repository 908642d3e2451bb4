-- (b) POST /v1/transfers of 100,000 (fee 600) between two distinct uniformly random wallets of
-- the 10,000, each with a fresh Idempotency-Key. to = from + an offset of 1..n-1, wrapped: never from.
-- wrk -t2 -c32 -d15s -H 'Authorization: Bearer <jwt>' -s bench/http/transfer.lua \
--   http://127.0.0.1:8000 -- <run id> <wallet ids file>
package.path = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "?.lua;" .. package.path
local common = require("common")

local ids

function init(args)
  ids = common.init(args)
end

function request()
  local from = math.random(#ids)
  local to = (from - 1 + math.random(#ids - 1)) % #ids + 1
  return common.post("/v1/transfers", string.format(
    '{"from_wallet_id":"%s","to_wallet_id":"%s","amount":100000}', ids[from], ids[to]))
end
