-- wrk script for the benchmark: POSTs one signing request per call.
--
--   wrk ... -s post.lua URL -- popsign KEY TOKEN_FILE
--       POST /v1/keys/KEY/verification-certificates with a fresh 48-hex code
--       per request, Authorization: Bearer <token>; success is 201.
--   wrk ... -s post.lua URL -- cfssl BODY_FILE
--       POST /api/v1/cfssl/sign with the JSON body in BODY_FILE (a prepared
--       CSR); success is 200.
--
-- At the end it prints one machine-readable line:
--   WRK requests=N seconds=S per_second=R ok=N bad=N p50_us=N p99_us=N
--       socket_errors=N statuses=201:N,...
-- "bad" counts every answer whose status is not the expected one; only "ok"
-- answers count towards per_second.

local threads = {}

function setup(thread)
   thread:set("thread_id", #threads + 1)
   table.insert(threads, thread)
end

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local text = f:read("*a")
   f:close()
   return text
end

function init(args)
   mode = args[1]
   statuses = {}
   counter = 0
   if mode == "popsign" then
      expected = 201
      path = "/v1/keys/" .. args[2] .. "/verification-certificates"
      local token = read_file(args[3]):gsub("%s+$", "")
      headers = {
         ["Authorization"] = "Bearer " .. token,
         ["Content-Type"] = "application/json",
      }
      -- A per-thread random prefix and a counter: every code differs, and
      -- making it costs next to nothing.
      math.randomseed(os.time() * 1000 + thread_id)
      prefix = string.format("%08X%08X%08X%08X", math.random(0, 0x7fffffff),
         math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), thread_id)
   elseif mode == "cfssl" then
      expected = 200
      path = "/api/v1/cfssl/sign"
      headers = { ["Content-Type"] = "application/json" }
      body = read_file(args[2])
   else
      error("post.lua: first argument must be popsign or cfssl")
   end
end

function request()
   if mode == "popsign" then
      counter = counter + 1
      local code = string.format("%s%08X%08X", prefix, math.floor(counter / 0x100000000),
         counter % 0x100000000)
      return wrk.format("POST", path, headers,
         '{"verification_code":"' .. code .. '"}')
   end
   return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local all, ok, bad = {}, 0, 0
   for _, t in ipairs(threads) do
      local exp = t:get("expected")
      for status, n in pairs(t:get("statuses")) do
         all[status] = (all[status] or 0) + n
         if status == exp then ok = ok + n else bad = bad + n end
      end
   end
   local list = {}
   for status, n in pairs(all) do
      table.insert(list, status .. ":" .. n)
   end
   table.sort(list)
   local e = summary.errors
   local seconds = summary.duration / 1e6
   io.write(string.format(
      "WRK requests=%d seconds=%.3f per_second=%.1f ok=%d bad=%d p50_us=%d p99_us=%d " ..
      "socket_errors=%d statuses=%s\n",
      summary.requests, seconds, ok / seconds, ok, bad,
      latency:percentile(50), latency:percentile(99),
      e.connect + e.read + e.write + e.timeout,
      #list > 0 and table.concat(list, ",") or "none"))
end
