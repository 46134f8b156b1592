-- wrk script of the bench "http" scenario: POSTs one fixed body and prints a JSON summary.
--
--   WRK_BODY_FILE=body.msgpack WRK_CONTENT_TYPE=application/msgpack \
--     wrk -t2 -c64 -d10s --latency -s bench/wrk_report.lua http://127.0.0.1:8000/v2/models/m/infer
--
-- Environment:
--   WRK_BODY_FILE     file whose bytes are the request body (required)
--   WRK_CONTENT_TYPE  Content-Type header (default application/octet-stream)
--   WRK_HEADERS       more headers, one "Name: value" per line (optional)
--   WRK_METHOD        HTTP method (default POST)
-- Headers given with wrk's -H are kept.
--
-- done() prints one line starting with {"wrk_report": ...}: requests, duration, req/s,
-- latency percentiles in microseconds (p50, p90, p99, p99.9, mean, max, stdev), responses with
-- status >= 400 (counted per thread in response() and summed), and wrk's socket errors
-- (connect, read, write, timeout) and its own status >= 400 count.

local body_file = os.getenv("WRK_BODY_FILE")
if body_file == nil or body_file == "" then
  error("wrk_report.lua: set WRK_BODY_FILE to the file holding the request body")
end
local f = assert(io.open(body_file, "rb"), "wrk_report.lua: cannot open " .. body_file)
wrk.body = f:read("*a")
f:close()

wrk.method = os.getenv("WRK_METHOD") or "POST"
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/octet-stream"
local extra = os.getenv("WRK_HEADERS")
if extra ~= nil then
  for line in extra:gmatch("[^\r\n]+") do
    local name, value = line:match("^%s*([^:]+):%s*(.-)%s*$")
    if name ~= nil then
      wrk.headers[name] = value
    end
  end
end

-- Each wrk thread runs this script in its own Lua state; setup() (main state) keeps the
-- thread objects so that done() can read every thread's counters.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  http_errors = 0
  responses = 0
end

function response(status, headers, body)
  responses = responses + 1
  if status >= 400 then
    http_errors = http_errors + 1
  end
end

local function json_number(x)
  if x ~= x or x == math.huge or x == -math.huge then
    return "null"
  end
  return string.format("%.3f", x)
end

function done(summary, latency, requests)
  local errors, seen = 0, 0
  for _, thread in ipairs(threads) do
    errors = errors + (thread:get("http_errors") or 0)
    seen = seen + (thread:get("responses") or 0)
  end
  local seconds = summary.duration / 1e6
  local e = summary.errors
  local fields = {
    string.format('"requests": %d', summary.requests),
    string.format('"responses_seen": %d', seen),
    string.format('"duration_s": %s', json_number(seconds)),
    string.format('"requests_per_s": %s', json_number(summary.requests / seconds)),
    string.format('"bytes_read": %d', summary.bytes),
    string.format('"p50_us": %s', json_number(latency:percentile(50))),
    string.format('"p90_us": %s', json_number(latency:percentile(90))),
    string.format('"p99_us": %s', json_number(latency:percentile(99))),
    string.format('"p999_us": %s', json_number(latency:percentile(99.9))),
    string.format('"mean_us": %s', json_number(latency.mean)),
    string.format('"max_us": %s', json_number(latency.max)),
    string.format('"stdev_us": %s', json_number(latency.stdev)),
    string.format('"errors": %d', errors),
    string.format('"errors_status_wrk": %d', e.status),
    string.format('"errors_connect": %d', e.connect),
    string.format('"errors_read": %d', e.read),
    string.format('"errors_write": %d', e.write),
    string.format('"errors_timeout": %d', e.timeout),
  }
  io.write('{"wrk_report": {' .. table.concat(fields, ", ") .. "}}\n")
end
