"""One benchmark point: reset the fleet, start a contender, drive a workload through it, collect numbers.

Latencies the load generator measures are wall-clock; the fleet's clock runs `time_scale` times faster,
so a point's numbers are converted to the fleet's time (seconds x scale, rates / scale) before they are
compared: they then read as if the simulated GPUs ran in real time. What does not scale (the
gateway's own CPU time per request) is magnified by the same factor, which the report states.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import aiohttp

from bench import contenders as contenders_mod
from bench import procs
from bench.workloads import PROJECT_ROOT, Workload
from kvroute import loadgen

WORKER_SNAPSHOT_WAIT_S = 2.5
COUNTERS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total", "vllm:request_success_total")


class FleetProc:
    """`bench.simfleet` as a child process; `reset()` empties every instance's cache between points.

    `tokenizer` (a model directory) and `kv_events` give the fleet what kvroute's exact cache view
    needs; `info["kv_events"]` then maps each URL to its endpoints."""

    def __init__(self, instances: int, profile: str, time_scale: float, seed: int, log_dir: Path,
                 engine: dict[str, int | float] | None = None, tokenizer: Path | None = None,
                 kv_events: bool = False, faults: Sequence[str] = (), fault_seconds: float = 0.0) -> None:
        argv = [sys.executable, "-m", "bench.simfleet", "--instances", str(instances), "--profile", profile,
                "--time-scale", str(time_scale), "--seed", str(seed)]
        for key, value in (engine or {}).items():
            argv += ["--engine", f"{key}={value}"]
        if tokenizer is not None:
            argv += ["--tokenizer", str(tokenizer)]
        if kv_events:
            argv.append("--kv-events")
        for spec in faults:
            argv += ["--fault", spec]
        if fault_seconds:
            argv += ["--fault-seconds", str(fault_seconds)]
        self.tokenizer = tokenizer
        # `-m bench.simfleet` resolves from the project root, wherever the caller runs.
        self.child = procs.Child("simfleet", argv, log_dir / "simfleet.log", cwd=PROJECT_ROOT)
        self.urls: list[str] = []
        self.info: dict[str, Any] = {}
        self.model = ""

    async def start(self) -> None:
        await self.child.start(stdin_pipe=True, stdout_pipe=True)
        assert self.child.proc is not None and self.child.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.child.proc.stdout.readline(), 60.0)
        except asyncio.TimeoutError:
            line = b""
        if not line:
            await self.child.stop()
            raise RuntimeError(f"simulated fleet did not start:\n{self.child.log_tail()}")
        self.info = json.loads(line)
        self.urls = list(self.info["urls"])
        for url in self.urls:
            await procs.wait_http(url + "/health", self.child)
        async with aiohttp.ClientSession() as session:
            async with session.get(self.urls[0] + "/v1/models") as resp:
                self.model = (await resp.json())["data"][0]["id"]

    async def reset(self) -> None:
        proc = self.child.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"reset\n")
        await proc.stdin.drain()
        answer = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        if answer.strip() != b"ok":
            raise RuntimeError(f"fleet reset failed: {answer!r}\n{self.child.log_tail()}")

    def pid(self) -> int | None:
        return self.child.proc.pid if self.child.proc else None

    async def stop(self) -> None:
        proc = self.child.proc
        if proc is not None and proc.stdin is not None and proc.returncode is None:
            proc.stdin.close()  # end of stdin is the fleet's signal to stop cleanly
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except asyncio.TimeoutError:
                pass
        await self.child.stop()


def parse_counters(text: str, names: Sequence[str] = COUNTERS) -> dict[str, float]:
    """Sum of every series of the named metrics on a Prometheus text page."""
    wanted = set(names)
    out = {name: 0.0 for name in names}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name in wanted:
            try:
                out[name] += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return out


def parse_by_label(text: str, name: str, label: str) -> dict[str, float]:
    """One metric's series keyed by one label's value, e.g. kvroute_decisions_total by branch."""
    out: dict[str, float] = {}
    prefix = name + "{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, _, value = line[len(prefix):].partition("} ")
        for pair in labels.split(","):
            key, _, raw = pair.partition("=")
            if key == label:
                out[raw.strip('"')] = out.get(raw.strip('"'), 0.0) + float(value)
    return out


async def router_metrics(admin_url: str) -> tuple[dict[str, float], dict[str, float]]:
    """kvroute's decisions by policy branch, and its cache view's account: prompt tokens it
    predicted cached at routing against those the backends reported cached, summed over backends."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        async with session.get(admin_url + "/metrics") as resp:
            text = await resp.text()
    view = {key: sum(parse_by_label(text, f"kvroute_{key}_total", "backend").values())
            for key in ("predicted_cached_tokens", "reported_cached_tokens")}
    return parse_by_label(text, "kvroute_decisions_total", "branch"), view


async def router_learned(admin_url: str) -> dict[str, dict[str, float]]:
    """kvroute's learned estimates per backend id (prefill rate, overhead, means), from its admin API:
    set against the fleet's profile, they show how far the cost model's inputs are from the truth."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        async with session.get(admin_url + "/admin/backends") as resp:
            states = await resp.json()
    return {s["id"]: s["core"]["learned"] for s in states["backends"] if "core" in s}


async def scrape(urls: Sequence[str]) -> list[dict[str, float]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
        async def one(url: str) -> dict[str, float]:
            async with session.get(url + "/metrics") as resp:
                return parse_counters(await resp.text())
        return list(await asyncio.gather(*(one(u) for u in urls)))


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None if it is gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def to_fleet_time(summary: dict[str, Any], scale: float) -> dict[str, Any]:
    """Wall-clock numbers as the simulated fleet's: durations x scale, rates / scale."""
    out = dict(summary)
    for key, value in summary.items():
        if value is None or not isinstance(value, (int, float)):
            continue
        if key.endswith("_rps") or key.endswith("_per_s"):
            out[key] = value / scale
        elif key.endswith("_s"):
            out[key] = value * scale
    return out


@dataclass
class Point:
    workload: str
    mode: str  # "closed" | "open"
    x: float  # concurrency, or the open loop's speedup/rate
    repeat: int
    seed: int
    contender: str
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    wall: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    # The gateway's own account of its choices (kvroute: decisions by policy branch).
    decisions: dict[str, float] = field(default_factory=dict)
    # kvroute: prompt tokens predicted cached at routing and reported cached by the backends.
    view: dict[str, float] = field(default_factory=dict)
    # kvroute: what its core learned of each backend by the end of the load (rates, means).
    learned: dict[str, dict[str, float]] = field(default_factory=dict)
    # kvroute: its predicted TTFT against the measured one (loadgen.calibration).
    calibration: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def key(self) -> str:
        return f"{self.workload}/{self.mode}/{self.x:g}/{self.repeat}/{self.contender}"


async def run_point(fleet: FleetProc, contender: contenders_mod.Contender, workload: Workload, *, mode: str,
                    x: float, repeat: int, seed: int, time_scale: float, log_dir: Path,
                    open_rate: float | None = None, progress_label: str = "",
                    keepalive: bool = False, warmup: Workload | None = None) -> tuple[Point, list[loadgen.Result]]:
    """Cold caches, a fresh gateway, one load run; failures are recorded on the point, not raised.
    `warmup` runs through the same gateway first, unmeasured: the point then starts on warm caches."""
    point = Point(workload.name, mode, x, repeat, seed, contender.name,
                  params={**workload.params, "time_scale": time_scale})
    results: list[loadgen.Result] = []
    await fleet.reset()
    try:
        running = await contenders_mod.start(contender, fleet.urls, log_dir, fleet.model, fleet.info)
    except Exception as exc:  # a contender that cannot start is a finding, not a crash of the suite
        point.error = f"start failed: {exc}"
        return point, results
    try:
        if warmup is not None:
            # At least 32 at once: a warm-up only has to reach the caches, not be measured.
            await loadgen.run_closed_loop(running.base_url, warmup.requests, max(32, int(x)),
                                          loadgen.ProgressBar(len(warmup.requests), progress_label + " warm-up"),
                                          keepalive=keepalive)
            point.params["warmup_requests"] = len(warmup.requests)
        before = await scrape(fleet.urls)
        gw_pid = running.child.proc.pid if running.child and running.child.proc else None
        cpu0 = (cpu_seconds(gw_pid), cpu_seconds(fleet.pid()), time.process_time())
        bar = loadgen.ProgressBar(len(workload.requests), progress_label)
        t0 = time.perf_counter()
        if mode == "closed":
            results = await loadgen.run_closed_loop(running.base_url, workload.requests, int(x), bar,
                                                    keepalive=keepalive)
        else:
            arrivals = workload.arrivals if open_rate is None else open_rate
            assert arrivals is not None
            results = await loadgen.run_open_loop(running.base_url, workload.requests, arrivals, time_scale, bar,
                                                  seed=seed, keepalive=keepalive)
        wall_s = time.perf_counter() - t0
        cpu1 = (cpu_seconds(gw_pid), cpu_seconds(fleet.pid()), time.process_time())
        after = await scrape(fleet.urls)
        if running.admin_url:
            if contender.workers > 1:
                # Worker 0 sums the other workers' counters from snapshots they write once a
                # poll_interval (1 s by default): wait for every worker's last one.
                await asyncio.sleep(WORKER_SNAPSHOT_WAIT_S)
            try:
                point.decisions, point.view = await router_metrics(running.admin_url)
                point.learned = await router_learned(running.admin_url)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                point.decisions = {"error": str(exc)}  # type: ignore[dict-item]
    finally:
        await running.stop()
    point.wall = loadgen.summarize(results, wall_s)
    point.summary = to_fleet_time(point.wall, time_scale)
    point.calibration = loadgen.calibration(results)
    hits = sum(a["vllm:prefix_cache_hits_total"] - b["vllm:prefix_cache_hits_total"] for a, b in zip(after, before))
    queries = sum(a["vllm:prefix_cache_queries_total"] - b["vllm:prefix_cache_queries_total"]
                  for a, b in zip(after, before))
    point.backend = {
        "prefix_cache_hits": hits,
        "prefix_cache_queries": queries,
        "hit_rate": hits / queries if queries else None,
        # How the contender spread the work: prompt tokens and requests each backend received.
        "prompt_tokens": [a["vllm:prompt_tokens_total"] - b["vllm:prompt_tokens_total"] for a, b in zip(after, before)],
        "requests": [a["vllm:request_success_total"] - b["vllm:request_success_total"] for a, b in zip(after, before)],
        # Prompt tokens each backend computed rather than found cached: where a shared prefix was prefilled.
        "computed_tokens": [(a["vllm:prefix_cache_queries_total"] - b["vllm:prefix_cache_queries_total"])
                            - (a["vllm:prefix_cache_hits_total"] - b["vllm:prefix_cache_hits_total"])
                            for a, b in zip(after, before)],
    }
    names = ("gateway", "fleet", "loadgen")
    point.cpu = {"wall_s": wall_s, **{f"{n}_s": (c1 - c0) if c0 is not None and c1 is not None else None
                                      for n, c0, c1 in zip(names, cpu0, cpu1)}}
    busy = sum(v for v in point.cpu.values() if v is not None) - wall_s
    point.cpu["cores_busy"] = busy / wall_s if wall_s > 0 else None
    # Other people's work on this shared machine shows up here, not in our own CPU counters.
    point.cpu["loadavg_1m"] = os.getloadavg()[0]
    return point, results
