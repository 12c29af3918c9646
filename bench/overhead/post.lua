-- wrk script for bench/overhead: POST the request body that run.py wrote to BENCH_BODY_FILE.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = file:read("*a")
file:close()
