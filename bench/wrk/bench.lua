-- wrk script for the Rentals API benchmark (bench/run.py drives it; read its docstring).
--
-- Settings come from environment variables, so one script serves every point:
--   BENCH_SCENARIO   customer | rentals_list | rentals_deep | dashboard | rentals_post | mixed
--   BENCH_TOKEN      bearer token sent with every request
--   BENCH_PARAMS     path of a Lua file returning the run's data (id ranges, product ids, cursor)
--   BENCH_MIX        mixed workload weights, e.g. "customer:60,rentals_list:20,rentals_post:20" (80 % reads)
--   BENCH_CUSTOMER_PATH  overrides the params' customer path (a format with one %d, or a fixed path)
-- Each thread counts replies by status; done() prints one line "BENCH_RESULT {json}".

local P = dofile(os.getenv("BENCH_PARAMS"))
-- The API serves a stand-in path until its customer route exists; peers always the real one.
P.customer_path = os.getenv("BENCH_CUSTOMER_PATH") or P.customer_path
local scenario = os.getenv("BENCH_SCENARIO") or "customer"
local token = os.getenv("BENCH_TOKEN") or ""

local get_headers = { ["Authorization"] = "Bearer " .. token }
local post_headers = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
local DAY = 86400

local function customer()
  return wrk.format("GET", string.format(P.customer_path, math.random(P.customer_min, P.customer_max)), get_headers)
end

local function rentals_list()
  return wrk.format("GET", P.rentals_path, get_headers)
end

local function rentals_deep()
  return wrk.format("GET", P.deep_path, get_headers)
end

local function dashboard()
  return wrk.format("GET", P.dashboard_path, get_headers)
end

-- A booking of a random active product by a random customer, for 1 to 7 days starting
-- in a window far past the seeded rentals, so that 409s come only from our own writes.
local function rentals_post()
  local product = P.product_ids[math.random(1, #P.product_ids)]
  local start = P.post_window_start + math.random(0, P.post_window_days - 1) * DAY
  local body = string.format(
    '{"customer_id": %d, "product_id": %d, "start_date": "%s", "end_date": "%s"}',
    math.random(P.customer_min, P.customer_max),
    product,
    os.date("!%Y-%m-%d", start),
    os.date("!%Y-%m-%d", start + math.random(1, 7) * DAY)
  )
  return wrk.format("POST", P.rentals_post_path, post_headers, body)
end

local kinds = {
  customer = customer,
  rentals_list = rentals_list,
  rentals_deep = rentals_deep,
  dashboard = dashboard,
  rentals_post = rentals_post,
}

-- Cumulative weights for the mixed workload.
local mix, mix_total = {}, 0
for name, weight in string.gmatch(os.getenv("BENCH_MIX") or "customer:100", "([%w_]+):(%d+)") do
  assert(kinds[name], "unknown kind in BENCH_MIX: " .. name)
  mix_total = mix_total + tonumber(weight)
  table.insert(mix, { upto = mix_total, make = kinds[name] })
end

local function mixed()
  local pick = math.random(1, mix_total)
  for _, entry in ipairs(mix) do
    if pick <= entry.upto then
      return entry.make()
    end
  end
end

kinds.mixed = mixed
local make_request = assert(kinds[scenario], "unknown BENCH_SCENARIO: " .. scenario)

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  table.insert(threads, thread)
end

counts = {}

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919 + math.floor(os.clock() * 1e6))
end

function request()
  return make_request()
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    local thread_counts = thread:get("counts")
    for status, n in pairs(thread_counts) do
      statuses[status] = (statuses[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(statuses) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, "status": {%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ", ")
  ))
end
