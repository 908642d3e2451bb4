-- (a) GET /healthz: the HTTP ceiling, no database, no token. wrk sends its static request.
-- wrk -t2 -c32 -d15s -s bench/http/healthz.lua http://127.0.0.1:8000
package.path = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "?.lua;" .. package.path
require("common")
wrk.path = "/healthz"
