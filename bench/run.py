"""`python -m bench.run --suite standard|quick`: every contender, same fleet, same workloads, one report.

Protocol of a point: the simulated fleet's caches and counters are emptied, the contender starts fresh
in front of it, the workload runs (closed loop at a concurrency, or open loop at a rate), the fleet's
counters are read, the contender stops. Contenders take turns at each point, in an order rotated by
the repeat, so that slow drift of the machine does not favour one of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench import contenders as contenders_mod
from bench import replay
from bench import report, sim_tokenizer, workloads
from bench.harness import FleetProc, Point, run_point

RESULTS = Path(__file__).resolve().parent / "results"
ALL_CONTENDERS = [*(f"kvroute:{p}" for p in contenders_mod.KVROUTE_POLICIES),
                  *(f"{kind}:{p}" for kind, policies in contenders_mod.PEER_POLICIES.items() for p in policies),
                  "direct"]

# The rivals a suite runs unless --contenders says otherwise: kvroute's cost policy and its two
# baselines, each peer gateway's cache-aware policy and its best load-only one (issue 14), and the
# single-backend floor. The other peer policies stay available by name.
RIVALS = ["kvroute:cost", "kvroute:round_robin", "kvroute:prefix_hash", "sglang:cache_aware", "smg:cache_aware",
          "smg:least_load", "vllm-router:cache_aware", "vllm-router:power_of_two", "direct"]


@dataclass
class Sweep:
    """One workload over a set of points: concurrencies (closed loop) or load levels (open loop)."""

    workload: str  # blog | gsp | multiturn | trace | hotspot | burst | hetero | stale
    mode: str  # closed | open
    points: list[float]
    # Closed loop: requests per point = clamp(per_client * concurrency, min, max).
    per_client: int = 8
    min_requests: int = 32
    max_requests: int = 256
    # Workload-builder arguments (see bench/workloads.py).
    params: dict[str, Any] = field(default_factory=dict)
    # Open loop without a trace: Poisson rates (fleet requests/s) are the points; with a trace the
    # points are its speedups.
    direct_max: float = 4  # "direct" (one backend, no router) only up to this point: a floor, not a rival
    repeats: int | None = None  # default: the suite's
    time_scale: float | None = None  # default: the suite's (the fleet restarts when it changes)
    # A scenario's fleet faults (bench/simfleet.py --fault, e.g. "0:slow:2"), from the start of every
    # point, cleared after `fault_seconds` fleet seconds if that is > 0; the fleet restarts for them.
    faults: list[str] = field(default_factory=list)
    fault_seconds: float = 0.0
    # A sweep's own fleet: another profile, or engine fields over the suite's (e.g. a KV pool the
    # working set overflows); the fleet restarts for them.
    profile: str | None = None
    engine: dict[str, int | float] = field(default_factory=dict)
    # Warm caches: before each point this many requests of the same workload with other questions
    # (`question_seed`) run through the contender unmeasured (blog-shaped workloads only); 0: cold.
    warm_requests: int = 0

    @property
    def label(self) -> str:
        """The name the report files the sweep under: `params["name"]` when two sweeps share a workload."""
        return str(self.params.get("name", self.workload))

    def fleet_engine(self, suite: "Suite") -> dict[str, int | float]:
        return {**suite.engine, **self.engine}

    def fleet_shape(self, suite: "Suite") -> tuple[Any, ...]:
        """What the fleet is started with; a sweep whose shape differs from the running fleet's restarts it."""
        return (self.time_scale or suite.time_scale, tuple(self.faults), self.fault_seconds,
                self.profile or suite.profile, tuple(sorted(self.fleet_engine(suite).items())))

    def requests_at(self, x: float) -> int:
        return max(self.min_requests, min(self.max_requests, int(self.per_client * x)))


@dataclass
class Suite:
    name: str
    sweeps: list[Sweep]
    repeats: int = 2
    time_scale: float = 2.0
    instances: int = 4
    profile: str = "qwen2.5-1.5b-l4"
    engine: dict[str, int | float] = field(default_factory=dict)
    contenders: list[str] = field(default_factory=lambda: list(RIVALS))
    seed: int = 0
    # A fresh client connection per request, for every contender: the SGLang gateway 0.3.2 does not set
    # TCP_NODELAY, so on a reused connection its first stream chunks wait ~40 ms for the client's
    # delayed ACK (docs/benchmarks.md); the comparison is about routing, so no contender gets that hit.
    keepalive: bool = False
    fleet: str = "sim"  # "sim" (kvroute sim, `profile`) or "vllm" (real vLLM CPU servers, bench/vllmfleet.py)
    fleet_urls: list[str] = field(default_factory=list)  # fleet "remote": already running (bench/remote_fleet.py)


# Requests 1,993-3,992 of the shared trace: the window the cost model was tuned on (issue 14). Results
# that matter are reported on windows outside it as well (`--trace-window`).
TUNING_WINDOW = (1993, 2000)

SUITES: dict[str, Suite] = {
    "standard": Suite(
        "standard",
        sweeps=[
            # At least 32 requests a point: with fewer, p50 flips between a cache hit's and a miss's TTFT.
            Sweep("blog", "closed", [1, 8, 16, 32, 64], per_client=4, min_requests=32, max_requests=256),
            # The blog experiment on warm caches, as a long-running fleet has them: full. 64 system
            # prompts of 1,000 tokens against 2,048 KV blocks (32k tokens) a backend, and an unmeasured
            # pass of 256 requests first: one backend holds about half of them, the fleet all of them
            # once, where spreading every prompt everywhere evicts.
            Sweep("blog", "closed", [1, 32], per_client=4, min_requests=32, max_requests=128,
                  params={"name": "blog-warm", "system_prompts": 64}, warm_requests=256,
                  engine={"num_gpu_blocks": 2048}, repeats=1),
            Sweep("gsp", "closed", [8, 32], per_client=8, min_requests=96, max_requests=256,
                  params={"scale": 0.25}),
            Sweep("multiturn", "closed", [8, 32], params={"conversations": 32, "turns": 5},
                  min_requests=160, max_requests=160),
            # The trace's second half: its prefix reuse spans long stretches (the first 400 requests
            # share 5% of their blocks, the whole trace 64%, these 2,000 requests 69%); blocks cut to
            # 32 tokens, replayed 18-36x faster than recorded (the fleet saturates between 16x and 32x).
            Sweep("trace", "open", [18, 24, 36], params={"start": TUNING_WINDOW[0], "limit": TUNING_WINDOW[1], "length_scale": 1 / 16},
                  direct_max=0, repeats=1),
        ],
        repeats=2,
        time_scale=2.0,
    ),
    # The reduced real-vLLM form: two vLLM CPU servers with the test tier's tiny model (real time).
    # Prompts stay under its 2,048-token context: 300 words are about 900 of its tokens.
    "real-vllm": Suite(
        "real-vllm",
        sweeps=[Sweep("blog", "closed", [1, 4], per_client=8, min_requests=32, max_requests=32,
                      params={"system_prompts": 4, "system_tokens": 300, "output_tokens": 16})],
        repeats=1,
        time_scale=1.0,
        instances=2,
        fleet="vllm",
    ),
    # Issue 14's scenarios, each with a pass rule in the report (bench/report.py): one system
    # prompt with 90% of the traffic; 200 requests at once on one new 8k-token prefix; a
    # heterogeneous fleet; stale metrics.
    "scenarios": Suite(
        "scenarios",
        sweeps=[
            Sweep("hotspot", "closed", [8, 32], per_client=4, min_requests=64, max_requests=128,
                  params={"hot_share": 0.9}),
            Sweep("burst", "open", [1], params={"requests": 200, "prefix_tokens": 8192}, direct_max=0),
            # One backend half as fast; one whose metrics stay frozen for the first 10 fleet seconds.
            Sweep("hetero", "closed", [8, 32], per_client=4, min_requests=64, max_requests=128,
                  faults=["0:slow:2"]),
            Sweep("stale", "closed", [32], per_client=4, min_requests=128, max_requests=128,
                  faults=["0:metrics_stale"], fault_seconds=10.0),
        ],
        repeats=2,
        time_scale=2.0,
    ),
    # The trace at real prompt lengths, where the working set overflows the fleet's KV pool so that
    # eviction is real: 1/4 length on the L4 fleet (2.9M distinct prompt tokens in the tuning window
    # against 4 x 594k of KV; context raised to 64k, which Qwen2.5 supports), and full length on H100s
    # running Llama-3.1-8B (11.6M distinct tokens against 4 x 432k; prompts cut at 128k context).
    "full": Suite(
        "full",
        sweeps=[
            Sweep("trace", "open", [4, 8], params={"name": "trace-quarter", "start": TUNING_WINDOW[0],
                                                   "limit": TUNING_WINDOW[1], "length_scale": 1 / 4},
                  engine={"max_model_len": 65536}, direct_max=0),
            Sweep("trace", "open", [1, 2], params={"name": "trace-full", "start": TUNING_WINDOW[0], "limit": 1000,
                                                   "length_scale": 1.0, "output_scale": 1.0,
                                                   "max_prompt_tokens": 130_000},
                  profile="llama-3.1-8b-h100", direct_max=0),
        ],
        repeats=1,
        time_scale=2.0,
    ),
    "quick": Suite(
        "quick",
        sweeps=[
            Sweep("blog", "closed", [1, 8, 32], per_client=2, min_requests=8, max_requests=64),
            Sweep("trace", "open", [32], params={"limit": 200, "length_scale": 1 / 16}, direct_max=0),
        ],
        repeats=1,
        time_scale=4.0,
        # One of each gateway, so that `make bench-quick` checks every kind in under 3 minutes.
        contenders=["kvroute:cost", "kvroute:round_robin", "sglang:cache_aware", "smg:cache_aware",
                    "vllm-router:cache_aware", "direct"],
    ),
}


def exact_fleet(suite: Suite) -> bool:
    """The sim fleet tokenizes with the shared model directory and publishes KV events when a
    contender routes on the exact view; every contender of the run then meets that same fleet."""
    return suite.fleet == "sim" and any(contenders_mod.by_name(n).exact for n in suite.contenders)


def make_fleet(suite: Suite, scale: float, logs: Path, faults: Sequence[str] = (), fault_seconds: float = 0.0,
               profile: str | None = None, engine: dict[str, int | float] | None = None) -> Any:
    if (faults or profile or engine) and suite.fleet != "sim":
        raise ValueError(f"scenario faults, profiles and engine fields need the simulated fleet, not {suite.fleet!r}")
    if suite.fleet == "remote":
        from bench.remote_fleet import RemoteFleet

        if scale != 1.0:
            raise ValueError("a remote fleet runs in real time (time scale 1)")
        return RemoteFleet(suite.fleet_urls)
    if suite.fleet == "vllm":
        from bench.vllmfleet import VllmFleet

        if scale != 1.0:
            raise ValueError("a real vLLM fleet runs in real time (time scale 1)")
        return VllmFleet(suite.instances, logs)
    exact = exact_fleet(suite)
    return FleetProc(suite.instances, profile or suite.profile, scale, suite.seed, logs, engine=engine or suite.engine,
                     faults=faults, fault_seconds=fault_seconds,
                     tokenizer=sim_tokenizer.ensure() if exact else None, kv_events=exact)


def build_workload(sweep: Sweep, model: str, x: float, seed: int, requests: int | None = None,
                   **extra: Any) -> workloads.Workload:
    """The workload of one point; `requests` overrides the sweep's count (a warm-up's)."""
    params = {**sweep.params, **extra}
    count = requests or sweep.requests_at(x)
    if sweep.workload == "blog":
        return workloads.blog(model, count, seed=seed, **params)
    if sweep.workload == "gsp":
        return workloads.gsp(model, seed=seed, limit=count, **params)
    if sweep.workload == "multiturn":
        return workloads.multiturn(model, seed=seed, **params)
    if sweep.workload in ("hetero", "stale"):  # the blog experiment on a fleet with a fault
        return workloads.blog(model, count, seed=seed, name=sweep.workload, **params)
    if sweep.workload == "hotspot":
        return workloads.hotspot(model, count, seed=seed, **params)
    if sweep.workload == "burst":  # all at once: the point is only a label
        return workloads.burst(model, seed=seed, **params)
    if sweep.workload == "trace":
        if sweep.mode == "open":
            params["speedup"] = x
        return workloads.trace(model, seed=seed, **params)
    raise ValueError(f"unknown workload {sweep.workload!r}")


def machine() -> dict[str, Any]:
    import os

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


async def run_suite(suite: Suite, out: Path, log: Any = sys.stderr) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    # Per-request lines and process logs are large: raw/ stays out of git (.gitignore); results.json,
    # report.md and the plots are what a committed run keeps.
    (out / "raw").mkdir(parents=True, exist_ok=True)
    logs = out / "raw" / "logs"
    fleet = make_fleet(suite, suite.time_scale, logs)
    started = time.time()
    points: list[Point] = []
    requests_path = out / "raw" / "requests.jsonl"
    try:  # a fleet that half started must not outlive the run either
        await fleet.start()
        # The suite's own fleet: the shape of a sweep that asks for nothing of its own.
        fleet_shape = Sweep("", "closed", []).fleet_shape(suite)
        meta = {
            "suite": suite.name,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m bench.run " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "versions": contenders_mod.versions(),
            "fleet": {"kind": suite.fleet, "instances": suite.instances,
                      "profile": suite.profile if suite.fleet == "sim" else fleet.info.get("profile", {}).get("name"),
                      "time_scale": suite.time_scale,
                      "engine_overrides": suite.engine, "kv_blocks": fleet.info.get("kv_blocks"),
                      # A model directory (bench/sim_tokenizer.py) and KV events, for the exact view.
                      "tokenizer": fleet.info.get("tokenizer"), "kv_events": bool(fleet.info.get("kv_events")),
                      "profile_numbers": fleet.info.get("profile"),
                      "remote": fleet.info.get("remote")},  # --fleet-urls: URLs, model, cache_reset
            "contenders": [contenders_mod.by_name(n).describe() for n in suite.contenders],
            "sweeps": [dataclasses.asdict(s) for s in suite.sweeps],
            "repeats": suite.repeats,
            "client": {"keepalive": suite.keepalive, "stream": True, "include_usage": True},
        }
        with open(requests_path, "w") as raw:
            for sweep in suite.sweeps:
                scale = sweep.time_scale or suite.time_scale
                shape = sweep.fleet_shape(suite)
                if shape != fleet_shape:
                    await fleet.stop()
                    fleet = make_fleet(suite, scale, logs, sweep.faults, sweep.fault_seconds, sweep.profile,
                                       sweep.fleet_engine(suite))
                    await fleet.start()
                    fleet_shape = shape
                for repeat in range(sweep.repeats or suite.repeats):
                    seed = suite.seed + repeat
                    for x in sweep.points:
                        work = build_workload(sweep, fleet.model, x, seed)
                        warmup = (build_workload(sweep, fleet.model, x, seed, requests=sweep.warm_requests,
                                                 question_seed=1) if sweep.warm_requests else None)
                        names = [n for n in suite.contenders if n != "direct" or x <= sweep.direct_max]
                        shift = repeat % len(names)
                        served: dict[str, dict[int, int]] = {}  # this point's placements, by contender
                        for name in replay.run_order(names[shift:] + names[:shift]):
                            label = f"{sweep.label} {sweep.mode} x={x:g} r{repeat} {name}"
                            source = replay.source_of(name)
                            point, results = await run_point(
                                fleet, contenders_mod.by_name(name),
                                work if source is None else replay.pinned(work, served.get(source, {}), fleet.urls),
                                mode=sweep.mode, x=x, repeat=repeat, seed=seed, time_scale=scale, log_dir=logs,
                                progress_label=label, keepalive=suite.keepalive, warmup=warmup)
                            served[name] = replay.served_by(results)
                            points.append(point)
                            for r in results:
                                raw.write(json.dumps({"point": point.key(), **r.to_json()}) + "\n")
                            s = point.summary
                            print(f"{label}: " + (f"ERROR {point.error}" if point.error else
                                  f"ok {s['ok']}/{s['requests']} ttft p50 {_ms(s['ttft_p50_s'])} "
                                  f"p99 {_ms(s['ttft_p99_s'])} thr {_num(s['throughput_rps'])} req/s "
                                  f"hit {_num(point.backend.get('hit_rate'))} "
                                  f"cores {_num(point.cpu.get('cores_busy'))} "
                                  f"[{time.time() - started:.0f}s]"), file=log, flush=True)
    finally:
        await fleet.stop()
    meta["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta["duration_s"] = time.time() - started
    data = {"meta": meta, "points": [dataclasses.asdict(p) for p in points]}
    (out / "results.json").write_text(json.dumps(data, indent=1))
    report.write(data, out)
    return data


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}ms"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _window(text: str) -> tuple[int, int]:
    start, sep, count = text.partition(":")
    try:
        window = (int(start), int(count))
    except ValueError:
        window = (-1, -1)
    if not sep or window[0] < 0 or window[1] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected START:COUNT, START >= 0 and COUNT >= 1 (e.g. 0:1992)")
    return window


def configure(argv: Sequence[str] | None = None) -> tuple[Suite, Path]:
    """The suite the command line asks for (a copy: SUITES stays as defined) and its results directory."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/<suite>-<time>)")
    parser.add_argument("--contenders", help="comma-separated subset, e.g. kvroute:cost,sglang:cache_aware")
    parser.add_argument("--workloads", help="comma-separated subset of the suite's workloads")
    parser.add_argument("--points", help="comma-separated points replacing every sweep's (concurrency or speedup)")
    parser.add_argument("--repeats", type=int, help="repeats per point")
    parser.add_argument("--max-requests", type=int, help="cap on requests per point (smaller, faster runs)")
    parser.add_argument("--time-scale", type=float, help="simulated clock speed-up (default: the suite's)")
    parser.add_argument("--trace-window", type=_window, metavar="START:COUNT",
                        help="replay requests START..START+COUNT-1 of the trace in every trace sweep (the tuning "
                        f"window is {TUNING_WINDOW[0]}:{TUNING_WINDOW[1]})")
    parser.add_argument("--seed", type=int, help="first seed (repeat r uses seed+r; default the suite's, 0)")
    parser.add_argument("--keepalive", action="store_true", help="reuse client connections (see Suite.keepalive)")
    parser.add_argument("--fleet-urls", help="comma-separated base URLs of an already running OpenAI-compatible "
                        "fleet to run against instead of the simulated one (real time: time scale 1)")
    args = parser.parse_args(argv)

    suite = dataclasses.replace(SUITES[args.suite])
    suite.sweeps = [dataclasses.replace(s, params=dict(s.params)) for s in suite.sweeps]
    if args.contenders:
        suite.contenders = [contenders_mod.by_name(n.strip()).name for n in args.contenders.split(",")]
        for name in suite.contenders:
            source = replay.source_of(name)
            if source is not None and source not in suite.contenders:
                parser.error(f"--contenders: {name} replays {source}'s placements; {source} must run too")
    if args.workloads:
        keep = {w.strip() for w in args.workloads.split(",")}
        suite.sweeps = [s for s in suite.sweeps if s.label in keep]
        if not suite.sweeps:
            parser.error(f"--workloads: none of {', '.join(sorted(keep))} is in suite {suite.name}")
    if args.seed is not None:
        suite.seed = args.seed
    for sweep in suite.sweeps:
        if args.trace_window and sweep.workload == "trace":
            sweep.params.update(start=args.trace_window[0], limit=args.trace_window[1])
        if args.points:
            sweep.points = [float(p) for p in args.points.split(",")]
        if args.repeats is not None:
            sweep.repeats = args.repeats
        if args.max_requests is not None:
            sweep.max_requests = args.max_requests
            sweep.min_requests = min(sweep.min_requests, args.max_requests)
            sweep.warm_requests = min(sweep.warm_requests, args.max_requests)
            if sweep.workload == "trace":
                sweep.params["limit"] = min(sweep.params.get("limit", args.max_requests), args.max_requests)
    if args.repeats is not None:
        suite.repeats = args.repeats
    if args.keepalive:
        suite.keepalive = True
    if args.time_scale is not None:
        suite.time_scale = args.time_scale
        for sweep in suite.sweeps:
            sweep.time_scale = None
    if args.fleet_urls:
        from bench.remote_fleet import parse_urls

        if args.time_scale not in (None, 1.0):
            parser.error("--fleet-urls: a real fleet runs in real time; --time-scale must be 1")
        if suite.time_scale != 1.0 or any(s.time_scale not in (None, 1.0) for s in suite.sweeps):
            print(f"--fleet-urls: suite {suite.name}'s time scale forced to 1 (real time)", file=sys.stderr)
        try:
            suite.fleet_urls = parse_urls(args.fleet_urls)
        except ValueError as exc:
            parser.error(str(exc))
        suite.fleet, suite.instances, suite.time_scale = "remote", len(suite.fleet_urls), 1.0
        for sweep in suite.sweeps:
            sweep.time_scale = None
    return suite, args.out or RESULTS / f"{suite.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def main(argv: Sequence[str] | None = None) -> int:
    suite, out = configure(argv)
    import uvloop

    uvloop.run(run_suite(suite, out))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
