-- wrk script for benchmarks/serving.py: POST /recommend with varied bodies, round-robin.
--
--   wrk -t2 -c8 -d10s --latency -s benchmarks/serving_wrk.lua http://127.0.0.1:3000 -- BODIES
--
-- BODIES is a Lua file that returns a list of JSON strings (serving.py writes it). Each thread
-- starts at a different body. done() prints one parseable line:
--   WRK_RESULT requests=.. duration_us=.. p50_us=.. p99_us=.. non2xx=.. connect=.. read=..
--              write=.. timeout=.. statuses=500:3,503:1
-- and, if any response was not 2xx, one WRK_SAMPLE_ERROR line with the first such body.

wrk.method = "POST"
wrk.path = "/recommend"
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  bodies = dofile(args[1])
  next_body = (id * 97) % #bodies
  non2xx = 0
  by_status = {}
  sample_error = ""
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    by_status[status] = (by_status[status] or 0) + 1
    if sample_error == "" then
      sample_error = status .. " " .. string.sub(body or "", 1, 300):gsub("%s+", " ")
    end
  end
end

function done(summary, latency, requests)
  local non2xx_total, statuses, sample = 0, {}, ""
  for _, thread in ipairs(threads) do
    non2xx_total = non2xx_total + thread:get("non2xx")
    for status, count in pairs(thread:get("by_status")) do
      statuses[status] = (statuses[status] or 0) + count
    end
    if sample == "" then sample = thread:get("sample_error") end
  end
  local parts = {}
  for status, count in pairs(statuses) do
    table.insert(parts, status .. ":" .. count)
  end
  local e = summary.errors
  print(string.format(
    "WRK_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d non2xx=%d "
      .. "connect=%d read=%d write=%d timeout=%d statuses=%s",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, non2xx_total, e.connect, e.read, e.write, e.timeout,
    #parts > 0 and table.concat(parts, ",") or "-"))
  if sample ~= "" then
    print("WRK_SAMPLE_ERROR " .. sample)
  end
end
