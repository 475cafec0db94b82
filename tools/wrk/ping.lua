-- wrk script: the controller's ping command (opt 9), the cheapest request a panel sends.
-- Usage: wrk -t2 -c16 -d10s -s tools/wrk/ping.lua http://127.0.0.1:CONTROLLER_PORT/
wrk.method = "POST"
wrk.body = '{"opt":9}'
wrk.headers["Content-Type"] = "application/json"

local errors = 0

response = function(status, headers, body)
   if status ~= 200 or not body:find('"res":1', 1, true) then
      errors = errors + 1
   end
end

done = function(summary, latency, requests)
   io.write(string.format("ping: %d requests, %d non-2xx/socket errors, p50 %.0f us, p99 %.0f us\n",
      summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
         + summary.errors.write + summary.errors.timeout,
      latency:percentile(50), latency:percentile(99)))
end
