"""Soak: kvroute under a steady mixed load for a long time, with backends killed and restarted and the
operator changing things, sampling the router's resident memory, open file descriptors, threads and
asyncio tasks. It passes when every request is accounted for (a whole answer, or an error the router
classified: an HTTP error with an OpenAI error body, or a stream ending in an error event) and the
samples after warm-up stay flat.

    python -m bench.soak --minutes 30                 # make soak
    python -m bench.soak --minutes 0.4 --sample 2     # the slice make test runs (tests/bench/test_soak.py)

Everything runs on 127.0.0.1; the result is written as JSON under bench/results/soak/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import aiohttp

from bench.procs import Child, free_port, wait_http
from kvroute.sse_lines import data_payloads, split_events

RESULTS = Path(__file__).resolve().parent / "results" / "soak"
TOKEN = "soak-token"
MODEL = "sim-model"
POLICIES = ("cost", "weighted", "least_load", "cost")


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    classified: dict[str, int] = field(default_factory=dict)  # "status:code" or "stream:code"
    unaccounted: list[str] = field(default_factory=list)  # transport errors, bodies that are not OpenAI's

    def error(self, key: str) -> None:
        self.classified[key] = self.classified.get(key, 0) + 1


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    threads: int
    tasks: int


def proc_sample(pid: int, t: float, tasks: int) -> Sample:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return Sample(t, int(status["VmRSS"].split()[0]), fds, int(status["Threads"]), tasks)


async def one_request(session: aiohttp.ClientSession, url: str, n: int, tally: Tally) -> None:
    stream = n % 2 == 0
    body = {"model": MODEL, "stream": stream, "max_tokens": 8 + n % 24,
            "messages": [{"role": "system", "content": f"You are assistant {n % 7}. " * 20},
                         {"role": "user", "content": f"question {n}"}]}
    headers = {"x-priority": ("high", "normal", "low")[n % 3]}
    tally.sent += 1
    try:
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
            raw = await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        tally.unaccounted.append(f"{type(exc).__name__}: {exc}")
        return
    if resp.status != 200:
        try:
            tally.error(f"{resp.status}:{json.loads(raw)['error']['code']}")
        except (ValueError, KeyError, TypeError):
            tally.unaccounted.append(f"HTTP {resp.status} without an OpenAI error: {raw[:200]!r}")
        return
    if not stream:
        tally.ok += 1
        return
    payloads = [p for event in split_events(raw)[0] for p in data_payloads(event)]
    if payloads and payloads[-1] == b"[DONE]":
        tally.ok += 1
        return
    try:
        tally.error(f"stream:{json.loads(payloads[-1])['error']['code']}")
    except (ValueError, KeyError, TypeError, IndexError):
        tally.unaccounted.append(f"stream ended without [DONE] or an error event: {raw[-200:]!r}")


async def load(url: str, rate: float, until: float, tally: Tally) -> None:
    """Open loop at `rate` requests per second (a slow answer does not slow the arrivals)."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        pending: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        for n in itertools.count():
            at = start + n / rate
            if at >= until:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            task = asyncio.create_task(one_request(session, url, n, tally))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)


async def admin(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with session.request(method, url, headers={"authorization": f"Bearer {TOKEN}"}, **kw) as resp:
        resp.raise_for_status()
        return await resp.json()


async def chaos(sims: list[Child], admin_url: str, backend_ids: list[str], until: float, every: float,
                events: list[str]) -> None:
    """Every `every` seconds: kill one backend with SIGKILL and start it again, then an admin change."""
    rng = random.Random(7)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for round_ in itertools.count():
            await asyncio.sleep(every)
            if time.monotonic() + every / 2 >= until:
                return
            victim = rng.randrange(len(sims))
            await sims[victim].stop(grace_s=0.0)
            await sims[victim].start()
            events.append(f"restarted backend {victim}")
            policy = POLICIES[round_ % len(POLICIES)]
            await admin(session, "PUT", admin_url + "/admin/policy", json={"policy": policy})
            drained = backend_ids[round_ % len(backend_ids)]
            await admin(session, "POST", f"{admin_url}/admin/backends/{drained}/drain")
            await asyncio.sleep(min(1.0, every / 4))
            await admin(session, "POST", f"{admin_url}/admin/backends/{drained}/undrain")
            events.append(f"policy {policy}; drained and undrained {drained}")


async def sampler(pid: int, admin_url: str, until: float, every: float, samples: list[Sample]) -> None:
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < until:
            stats = await admin(session, "GET", admin_url + "/admin/stats")
            samples.append(proc_sample(pid, round(time.monotonic() - start, 1), int(stats.get("process", {}).get("tasks", -1))))
            await asyncio.sleep(every)


def flat(samples: list[Sample], warmup: float) -> dict[str, Any]:
    """Compare the first and last third of the samples taken after warm-up (medians), per metric."""
    after = [s for s in samples if s.t >= warmup]
    if len(after) < 3:
        return {"ok": False, "why": f"only {len(after)} samples after warm-up"}
    third = max(1, len(after) // 3)

    def median(values: list[int]) -> float:
        values = sorted(values)
        return float(values[len(values) // 2])

    # Allowed growth: memory may settle by a few MiB (allocator arenas); fds and tasks follow the
    # load's concurrency, which is steady, so they may move by a handful only.
    bounds = {"rss_kib": lambda a: max(0.10 * a, 8192), "fds": lambda a: 16, "threads": lambda a: 2,
              "tasks": lambda a: 16}
    report: dict[str, Any] = {"ok": True}
    for name, bound in bounds.items():
        first = median([getattr(s, name) for s in after[:third]])
        last = median([getattr(s, name) for s in after[-third:]])
        grew = last - first
        report[name] = {"first": first, "last": last, "grew": grew, "allowed": bound(first)}
        if grew > bound(first):
            report["ok"] = False
    return report


async def soak(minutes: float, rate: float, sample_every: float, chaos_every: float, out: Path) -> dict[str, Any]:
    run = out / time.strftime("soak-%Y%m%d-%H%M%S")
    ports = [free_port() for _ in range(3)]
    sims = [Child(f"sim{i}", [sys.executable, "-m", "kvroute.cli", "sim", "--instances", "1", "--base-port",
                              str(port), "--per-token-delay", "0.002"], run / f"sim{i}.log")
            for i, port in enumerate(ports)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    port, admin_port = free_port(), free_port()
    router = Child("kvroute", [sys.executable, "-m", "kvroute.cli", "serve", "--port", str(port), "--admin-port",
                               str(admin_port), "--admin-token", TOKEN, "--poll-interval", "1",
                               "--retry-budget", "0.5", "--breaker-cooldown", "2",
                               *itertools.chain.from_iterable(("--backend", u) for u in urls)], run / "kvroute.log")
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    tally, samples, events = Tally(), [], []
    try:
        for sim, sim_url in zip(sims, urls):
            await sim.start()
            await wait_http(sim_url + "/health", sim)
        await router.start()
        await wait_http(url + "/health", router)
        async with aiohttp.ClientSession() as session:
            backend_ids = [b["id"] for b in (await admin(session, "GET", admin_url + "/admin/backends"))["backends"]]
        until = time.monotonic() + minutes * 60
        assert router.proc is not None
        await asyncio.gather(load(url, rate, until, tally),
                             chaos(sims, admin_url, backend_ids, until, chaos_every, events),
                             sampler(router.proc.pid, admin_url, until, sample_every, samples))
        alive = router.alive()
    finally:
        await router.stop()
        for sim in sims:
            await sim.stop()
    trend = flat(samples, warmup=minutes * 60 / 3)
    accounted = tally.ok + sum(tally.classified.values()) == tally.sent and not tally.unaccounted
    result = {"minutes": minutes, "rate": rate, "tally": asdict(tally), "accounted": accounted,
              "router_alive": alive, "trend": trend, "events": events,
              "samples": [asdict(s) for s in samples],
              "ok": accounted and alive and bool(trend["ok"]) and tally.ok > 0}
    run.mkdir(parents=True, exist_ok=True)
    (run / "result.json").write_text(json.dumps(result, indent=1))
    result["path"] = str(run / "result.json")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=40.0, help="requests per second (open loop)")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--chaos", type=float, default=120.0, help="seconds between backend restarts/admin changes")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = asyncio.run(soak(args.minutes, args.rate, args.sample, args.chaos, args.out))
    summary = {k: result[k] for k in ("ok", "accounted", "router_alive", "path")}
    summary["tally"] = {k: v for k, v in result["tally"].items() if k != "unaccounted"}
    summary["unaccounted"] = result["tally"]["unaccounted"][:5]
    summary["trend"] = result["trend"]
    print(json.dumps(summary, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
