-- wrk script for bench/overhead: a short chat request, streamed when BENCH_STREAM=1.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local stream = os.getenv("BENCH_STREAM") == "1" and ',"stream":true' or ""
wrk.body = '{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful assistant."},'
  .. '{"role":"user","content":"Hello! Who are you?"}],"max_tokens":16' .. stream .. '}'
