-- wrk script for the sidecar benchmark: POST one JSON body (read from BENCH_BODY_FILE).
--
-- BENCH_UNIQUE=1     every request gets a distinct prompt (a counter is put where the body has
--                    the placeholder @N@): the cache-miss path of --all-stages.
-- BENCH_REQUESTS=N   after N responses the thread stops and prints BENCH_LIMIT_REACHED; the
--                    harness then sends SIGINT, on which wrk's main thread stops sleeping out -d
--                    and prints the summary (wrk 4.1 has no count mode of its own).
-- The result is printed as one line: BENCH_RESULT {json}. Latencies are in microseconds.

local body_file = assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is not set")
local handle = assert(io.open(body_file, "rb"))
local body = handle:read("*a")
handle:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_API_KEY") or "sk-placeholder")

local limit = tonumber(os.getenv("BENCH_REQUESTS") or "0") or 0
local unique = os.getenv("BENCH_UNIQUE") == "1"

if unique then
  local before, after = body:match("^(.*)@N@(.*)$")
  assert(before, "BENCH_UNIQUE needs the placeholder @N@ in the body")
  local seq = 0
  -- The harness passes a tag unique to this run: the counter restarts at 1 in every run.
  local run_tag = os.getenv("BENCH_RUN_TAG") or "run"
  function request()
    seq = seq + 1
    return wrk.format(nil, nil, nil, before .. run_tag .. "-" .. seq .. after)
  end
end

if limit > 0 then
  -- Defining response() makes wrk hand every response to Lua, so only do it in count mode.
  local count = 0
  local announced = false
  function response(status, headers, response_body)
    count = count + 1
    if count >= limit and not announced then
      announced = true
      wrk.thread:stop()
      io.write("BENCH_LIMIT_REACHED\n")
      io.flush()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d,"min":%d,"stdev":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max, latency.min, latency.stdev))
  io.flush()
end
