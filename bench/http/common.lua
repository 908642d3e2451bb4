-- What every scenario script shares: a fresh Idempotency-Key per request, a count of every
-- response status per thread, and one JSON line of results for bench/http_bench.py to read.
--
-- A scenario script is run as `wrk ... -s <script> <url> -- <run id> <wallet ids file>`: the run
-- id is random per wrk run (so no key repeats across runs), the file has one wallet id a line
-- in bench_ids order (line 1 is the hot wallet).

local common = {}

local threads = {}
local key_prefix
local counter = 0

-- Runs in the setup environment once per thread, before that thread's init().
function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

-- Every response is counted, so done() can tell a clean run from one with a single 500, and
-- so are replays: a repeated key would answer 201 without moving money.
statuses = {}
replayed = 0

function response(status, headers)
  statuses[status] = (statuses[status] or 0) + 1
  if headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then
    replayed = replayed + 1
  end
end

-- Reads the run id and the wallet ids; returns the ids, line 1 first.
function common.init(args)
  key_prefix = string.format("%s-%d-", args[1], thread_id)
  wrk.headers["Content-Type"] = "application/json"
  local ids = {}
  for line in io.lines(args[2]) do
    ids[#ids + 1] = line
  end
  math.randomseed(os.time() * 1000 + thread_id)
  return ids
end

-- A POST whose Idempotency-Key is the run id, the thread and a per-thread counter: unique.
function common.post(path, body)
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = key_prefix .. counter
  return wrk.format("POST", path, nil, body)
end

function done(summary, latency)
  local counts, replays = {}, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
    replays = replays + thread:get("replayed")
  end
  local status_fields = {}
  for status, count in pairs(counts) do
    status_fields[#status_fields + 1] = string.format('"%d": %d', status, count)
  end
  local errors = summary.errors
  io.write(string.format(
    'wrk-result {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"statuses": {%s}, "replayed": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    table.concat(status_fields, ", "), replays
  ))
end

return common
