-- wrk script: the controller's add command (opt 1), one new user per request, each with a
-- path of its own, so every request changes the route table of every worker.
-- Usage: wrk -t2 -c16 -d10s -s tools/wrk/add.lua http://127.0.0.1:CONTROLLER_PORT/
-- Set USERS_PER_REQUEST in the environment for larger batches (default 1).
local per_request = tonumber(os.getenv("USERS_PER_REQUEST") or "1")
local thread_ids = 0
local counter = 0
local id = 0

setup = function(thread)
   thread:set("id", thread_ids)
   thread_ids = thread_ids + 1
end

request = function()
   local entries = {}
   for i = 1, per_request do
      counter = counter + 1
      entries[i] = string.format('{"path":"/wrk-%d-%d","dst":"127.0.0.1:9"}', id, counter)
   end
   local body = '{"opt":1,"args_bunch":[' .. table.concat(entries, ",") .. ']}'
   return wrk.format("POST", "/", {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
   io.write(string.format("add (%d users per request): %d requests, p50 %.0f us, p99 %.0f us\n",
      per_request, summary.requests, latency:percentile(50), latency:percentile(99)))
end
