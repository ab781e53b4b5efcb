-- wrk script for bench/poll.py: rotates over the request paths listed, one per line, in the
-- file named by the environment variable WRK_PATHS (each thread starts at its own offset),
-- and prints latency percentiles in a form the driver parses.
--
--   WRK_PATHS=paths.txt wrk -t2 -c32 -d10s -s bench/rotate.lua http://127.0.0.1:PORT

local threads = 0

function setup(thread)
   thread:set("thread_no", threads)
   threads = threads + 1
end

local paths = {}
local next_index = 0

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
   next_index = ((thread_no or 0) * 397) % #paths
end

function request()
   next_index = next_index % #paths + 1
   return wrk.format("GET", paths[next_index])
end

function done(summary, latency, requests)
   io.write(string.format("BENCH requests %d\n", summary.requests))
   io.write(string.format("BENCH duration_us %d\n", summary.duration))
   io.write(string.format("BENCH errors %d\n",
      summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout))
   io.write(string.format("BENCH status_errors %d\n", summary.errors.status))
   for _, p in ipairs({ 50, 90, 99 }) do
      io.write(string.format("BENCH latency_p%d_us %d\n", p, latency:percentile(p)))
   end
end
