-- wrk script: POST a create_site job, each request with the next tenant's token, so the
-- one-active-job rule never refuses one. Threads take interleaved tokens, never the same one.
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  tokens[#tokens + 1] = line
end

local created = 0
function setup(thread)
  thread:set("offset", created)
  created = created + 1
end

local step = 2  -- wrk's -t
function init(args)
  position = offset
end

wrk.method = "POST"
wrk.body = '{"job_type": "create_site"}'

function request()
  position = position + step
  local token = tokens[(position % #tokens) + 1]
  -- wrk.format's headers replace wrk.headers, so all of them go here.
  return wrk.format(nil, nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token})
end
