-- wrk script for benchmarks/serve_load.py: POST one prepared v2 inference body over and over.
-- Environment: BODY_FILE (the body), HEADER_LENGTH (Inference-Header-Content-Length, binary
-- bodies only). At the end it prints one line "RESULT {json}" that serve_load.py parses.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
local header_length = os.getenv("HEADER_LENGTH")
if header_length ~= nil and header_length ~= "" then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = header_length
else
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"status_errors": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
