-- wrk script for bench/backup.py: PUTs one request body (the file named by WRK_BODY) to the
-- request paths listed, one per line, in the file named by WRK_PATHS, rotating over them
-- (each thread starts at its own offset), and prints latency percentiles and status counts
-- in the form the driver parses.
--
--   WRK_PATHS=paths.txt WRK_BODY=config.txt wrk -t2 -c32 -d10s -s bench/put.lua http://127.0.0.1:PORT

local threads = {}

function setup(thread)
   thread:set("thread_no", #threads)
   table.insert(threads, thread)
end

local paths = {}
local body = nil
local next_index = 0
local headers = { ["Content-Type"] = "application/octet-stream", ["User-Agent"] = "innovaphone-update/1.0" }
local non_200 = 0

function init(args)
   local name = os.getenv("WRK_PATHS")
   local file = assert(io.open(name, "r"), "WRK_PATHS must name a readable file")
   for line in file:lines() do
      if #line > 0 then
         paths[#paths + 1] = line
      end
   end
   file:close()
   assert(#paths > 0, "no request paths in " .. name)
   local body_file = assert(io.open(os.getenv("WRK_BODY"), "rb"), "WRK_BODY must name a readable file")
   body = body_file:read("*a")
   body_file:close()
   next_index = ((thread_no or 0) * 397) % #paths
end

function request()
   next_index = next_index % #paths + 1
   return wrk.format("PUT", paths[next_index], headers, body)
end

function response(status, headers, body)
   if status ~= 200 then
      non_200 = non_200 + 1
   end
end

function done(summary, latency, requests)
   local not_ok = 0
   for _, thread in ipairs(threads) do
      not_ok = not_ok + (thread:get("non_200") or 0)
   end
   io.write(string.format("BENCH requests %d\n", summary.requests))
   io.write(string.format("BENCH duration_us %d\n", summary.duration))
   io.write(string.format("BENCH errors %d\n",
      summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout))
   io.write(string.format("BENCH non_200 %d\n", not_ok))
   for _, p in ipairs({ 50, 90, 99 }) do
      io.write(string.format("BENCH latency_p%d_us %d\n", p, latency:percentile(p)))
   end
end
