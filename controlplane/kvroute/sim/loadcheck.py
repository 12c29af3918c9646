"""How much load `kvroute sim` serves with honest timing: `python -m kvroute.sim.loadcheck`.

Starts `kvroute sim` in a child process (so the simulator has its own core, as in use), offers
open-loop Poisson traffic of streamed chat requests from this process, and reports what was
reached: request rate, the simulator's CPU use, and how late engine steps were delivered against
the simulated clock (lag). Timing is honest while steps go out close to their deadlines: then the
TTFT a client measures matches the TTFT the simulator reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time

import aiohttp

from kvroute.sse_lines import EventSplitter, data_payloads


class _StreamClient(asyncio.Protocol):
    """A minimal streaming client (a callback per received segment, no task per chunk), so the
    load generator costs less CPU than the simulator it measures."""

    def __init__(self, request: bytes, t0: float, ttfts: list[float], finished: asyncio.Future[bool]) -> None:
        self.request, self.t0, self.ttfts, self.finished = request, t0, ttfts, finished
        # The bytes as received, chunked framing included: the chunk-size lines between events are
        # not `data:` lines, so they drop out of the payloads.
        self.events = EventSplitter()
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for event in self.events.feed(data):
            # The role chunk goes out before any token; TTFT is the first content delta.
            if self.t0 and b'"delta":{"content"' in event:
                self.ttfts.append(time.perf_counter() - self.t0)
                self.t0 = 0.0
            if b"[DONE]" in data_payloads(event):
                self.done = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(self.done)


def _cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _cpu_seconds(pid: int) -> float:
    return sum(_cpu_times(pid))


async def run(args: argparse.Namespace) -> dict:
    # cProfile on CPU time (not wall time: the simulator mostly sleeps between steps).
    launcher = (f"import cProfile, sys, time; from kvroute.sim.cli import main; p = cProfile.Profile(time.process_time); "
                f"p.enable(); main(sys.argv[1:]); p.disable(); p.dump_stats({args.cprofile!r})" if args.cprofile
                else "import sys; from kvroute.sim.cli import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", launcher,
           "--instances", str(args.instances), "--base-port", "0", "--profile", args.profile,
           "--time-scale", str(args.time_scale), "--seed", str(args.seed)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        urls = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))["urls"]
        rng = random.Random(args.seed)
        systems = [" ".join(f"rule{j}x{i}" for j in range(args.system_words)) for i in range(8)]
        ttfts: list[float] = []
        errors = 0
        done = 0
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:

            loop = asyncio.get_running_loop()

            async def one(i: int) -> None:
                nonlocal errors, done
                host, port = urls[i % len(urls)].removeprefix("http://").rsplit(":", 1)
                body = json.dumps({
                    "model": "sim-model", "stream": True,
                    "max_tokens": max(1, int(rng.expovariate(1 / args.max_tokens))),
                    "messages": [{"role": "system", "content": rng.choice(systems)},
                                 {"role": "user", "content": f"question {i} " + "word " * args.user_words}]}).encode()
                head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                t0 = time.perf_counter()
                finished = loop.create_future()
                try:
                    await loop.create_connection(lambda: _StreamClient(head + body, t0, ttfts, finished), host, int(port))
                    if await finished:
                        done += 1
                    else:
                        errors += 1
                except OSError:
                    errors += 1

            tasks = []
            cpu0 = _cpu_seconds(proc.pid)
            sys0 = _cpu_times(proc.pid)[1]
            own0 = time.process_time()
            start = time.perf_counter()
            t = 0.0
            n = 0
            while t < args.duration:
                t += rng.expovariate(args.rate)
                delay = start + t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(n)))
                n += 1
            offered_s = time.perf_counter() - start
            cpu1 = _cpu_seconds(proc.pid)
            own1 = time.process_time()
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - start
            cpu2 = _cpu_seconds(proc.pid)
            sys2 = _cpu_times(proc.pid)[1]
            states = []
            ttft_sum = ttft_count = 0.0
            for url in urls:
                async with http.get(url + "/sim/state") as r:
                    states.append(await r.json())
                async with http.get(url + "/metrics") as r:
                    for line in (await r.text()).splitlines():
                        if line.startswith("vllm:time_to_first_token_seconds_sum"):
                            ttft_sum += float(line.rsplit(" ", 1)[1])
                        elif line.startswith("vllm:time_to_first_token_seconds_count"):
                            ttft_count += float(line.rsplit(" ", 1)[1])
        steps = sum(s["steps"] for s in states)
        ttfts.sort()
        return {
            "instances": args.instances, "profile": args.profile, "time_scale": args.time_scale,
            "offered_rate": round(n / offered_s, 1), "requests": n, "completed": done, "errors": errors,
            "sim_cpu_fraction_of_one_core": round((cpu1 - cpu0) / offered_s, 2),
            # CPU the simulator spent per generated token over the whole run, and the token rate
            # one core could sustain at that cost: contention-independent capacity.
            "sim_cpu_us_per_token": round(1e6 * (cpu2 - cpu0) / max(1, sum(s["generation_tokens"] for s in states)), 1),
            "one_core_capacity_tokens_per_s": round(max(1, sum(s["generation_tokens"] for s in states)) / max(1e-9, cpu2 - cpu0)),
            "loadgen_cpu_fraction_of_one_core": round((own1 - own0) / offered_s, 2),
            "loadavg_1min": os.getloadavg()[0],
            "sim_cpu_system_share": round((sys2 - sys0) / max(1e-9, cpu2 - cpu0), 2),
            "wall_s": round(wall, 1),
            "generation_tokens": sum(s["generation_tokens"] for s in states),
            "tokens_per_s": round(sum(s["generation_tokens"] for s in states) / offered_s),
            "steps": steps,
            "lag_mean_ms": round(1000 * sum(s["lag_mean_s"] * s["steps"] for s in states) / max(1, steps), 2),
            "lag_max_ms": round(1000 * max(s["lag_max_s"] for s in states), 1),
            "steps_late_over_5ms_pct": round(100 * sum(s["lag_over_5ms"] for s in states) / max(1, steps), 2),
            "max_waiting": max(s["waiting"] for s in states),
            # Simulated TTFT is in simulated seconds: divide by time_scale to compare.
            "sim_ttft_mean_ms": round(1000 * ttft_sum / max(1.0, ttft_count) / args.time_scale, 1),
            "client_ttft_mean_ms": round(1000 * statistics.fmean(ttfts), 1) if ttfts else None,
            "client_ttft_p50_ms": round(1000 * ttfts[len(ttfts) // 2], 1) if ttfts else None,
            "client_ttft_p99_ms": round(1000 * ttfts[int(len(ttfts) * 0.99)], 1) if ttfts else None,
            "prefix_hit_rate": round(sum(s["prefix_cache_hits"] for s in states)
                                     / max(1, sum(s["prefix_cache_queries"] for s in states)), 3),
        }
    finally:
        proc.terminate()
        await proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvroute.sim.loadcheck")
    p.add_argument("--instances", type=int, default=16)
    p.add_argument("--rate", type=float, default=200.0, help="offered requests/s over the whole fleet")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--profile", default="qwen2.5-1.5b-l4")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--max-tokens", type=float, default=128, help="mean of the exponential answer length")
    p.add_argument("--system-words", type=int, default=300)
    p.add_argument("--user-words", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cprofile", default=None, help="run the simulator under cProfile, writing stats here")
    args = p.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        result = asyncio.run(run(args))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
