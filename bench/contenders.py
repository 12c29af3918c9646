"""The routers a benchmark compares, each started fresh in front of the same fleet.

A contender is a name plus how to start it; `start()` returns the base URL clients use and a handle
to stop it. Every gateway runs as its own process so that none shares an event loop (or a core's
time slice) with the load generator.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench import peer_env, procs, replay


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # "kvroute", "direct" or a peer gateway's kind (bench/peer_env.PEERS)
    policy: str = ""
    # Extra command-line flags, recorded with the results as the contender's settings.
    flags: tuple[str, ...] = ()
    # kvroute only: the exact cache view (the fleet's tokenizer and KV events, given at start since
    # the fleet picks their paths and ports), and the number of routing processes (`--workers`).
    exact: bool = False
    workers: int = 1
    # replay:<contender> only: whose placements it replays (bench/replay.py).
    replays: str = ""

    def describe(self) -> dict[str, Any]:
        """The record kept with the results: what ran (package and version; none for `direct`),
        with which policy and flags."""
        package, version = None, None
        if self.kind in peer_env.PEERS:
            package, version = peer_env.PEERS[self.kind].package, peer_env.PEERS[self.kind].version
        elif self.kind == "kvroute":
            from importlib import metadata

            package, version = "kvroute", metadata.version("kvroute")
        return {"name": self.name, "kind": self.kind, "package": package, "version": version,
                "policy": self.policy, "flags": list(self.flags), "exact": self.exact, "workers": self.workers,
                "replays": self.replays or None}


KVROUTE_POLICIES = ("round_robin", "least_load", "prefix_hash", "cost")
# Each peer's policies as its --help lists them (smg 1.13.0: random, round_robin, passthrough,
# cache_aware, power_of_two, least_load, manual, consistent_hashing, prefix_hash; vllm-router 0.1.17:
# random, round_robin, cache_aware, kv_aware, power_of_two, consistent_hash, sticky_least_loaded).
PEER_POLICIES = {"sglang": ("cache_aware", "round_robin"),
                 "smg": ("cache_aware", "least_load", "round_robin"),
                 "vllm-router": ("cache_aware", "kv_aware", "power_of_two", "round_robin")}

# kvroute's bench settings: the control plane polls backends often enough that its view of load is
# current at the simulated time scales used here; logs quiet so that logging costs no CPU; debug
# headers tell the load generator each decision's branch and predicted TTFT (calibration).
KVROUTE_FLAGS = ("--log-level", "warning", "--debug-headers")
# The peers' defaults, logs quiet; retries and circuit breakers stay on as they ship.
PEER_FLAGS = {"sglang": ("--log-level", "warn"), "smg": ("--log-level", "warn"),
              "vllm-router": ("--log-level", "warning")}


def kvroute(policy: str, *, exact: bool = False, workers: int = 1,
            weights: Sequence[tuple[str, float]] = ()) -> Contender:
    """`kvroute:<policy>[+exact][:w<N>][@<weight>=<value>...]`: `+exact` routes on the exact cache view
    (`--tokenizer` with the fleet's model directory, `--kv-events-endpoints` with its publishers), `:wN`
    runs `serve --workers N`, each `@name=value` sets one of the policy's weights (`--policy-weights`);
    without them, the byte view, one worker and the default weights."""
    name = (f"kvroute:{policy}" + ("+exact" if exact else "") + (f":w{workers}" if workers != 1 else "")
            + "".join(f"@{k}={v:g}" for k, v in weights))
    flags = KVROUTE_FLAGS + (("--workers", str(workers)) if workers != 1 else ())
    if weights:
        flags += ("--policy-weights", ",".join(f"{k}={v!r}" for k, v in weights))
    return Contender(name, "kvroute", policy, flags, exact=exact, workers=workers)


def _weights(spec: str, policy: str, given: list[str]) -> list[tuple[str, float]]:
    from kvroute.reference import POLICY_WEIGHTS

    out = []
    for item in given:
        key, sep, value = item.partition("=")
        try:
            number = float(value) if sep else float("nan")
        except ValueError:
            number = float("nan")
        if key not in POLICY_WEIGHTS[policy] or number != number:
            raise ValueError(f"kvroute contender {spec!r}: '@{item}' is not <weight>=<number> with a weight of "
                             f"{policy} ({', '.join(POLICY_WEIGHTS[policy]) or 'it has none'})")
        out.append((key, number))
    return out


def parse_kvroute(spec: str) -> Contender:
    """The part after `kvroute:`, e.g. `cost`, `cost+exact`, `cost:w4`, `cost+exact:w4`, `cost@content_weight=0`."""
    spec_weights, *given = spec.split("@")
    head, _, tail = spec_weights.partition(":")
    policy, _, feature = head.partition("+")
    if policy not in KVROUTE_POLICIES or feature not in ("", "exact"):
        raise ValueError(f"unknown kvroute contender {spec!r} (<policy>[+exact][:w<N>], policy one of "
                         f"{', '.join(KVROUTE_POLICIES)})")
    workers = 1
    if tail:
        if not (tail.startswith("w") and tail[1:].isdigit() and int(tail[1:]) >= 1):
            raise ValueError(f"unknown kvroute contender {spec!r}: after the policy, :w<N> (workers)")
        workers = int(tail[1:])
    return kvroute(policy, exact=feature == "exact", workers=workers, weights=_weights(spec, policy, given))


def peer(kind: str, policy: str) -> Contender:
    # vllm-router's kv_aware routes on the engines' KV events with the model's tokenizer: like
    # kvroute's exact view, it needs the fleet that tokenizes with a model directory and publishes.
    exact = (kind, policy) == ("vllm-router", "kv_aware")
    return Contender(f"{kind}:{policy}", kind, policy, PEER_FLAGS[kind], exact=exact)


def sglang(policy: str) -> Contender:
    return peer("sglang", policy)


DIRECT = Contender("direct", "direct")


def by_name(name: str) -> Contender:
    kind, _, policy = name.partition(":")
    if name == "direct":
        return DIRECT
    if kind == "kvroute" and policy:
        return parse_kvroute(policy)
    source = replay.source_of(name)
    if source is not None:
        if replay.source_of(source) is not None:
            raise ValueError(f"contender {name!r}: a replay replays a contender's placements, not another replay's")
        by_name(source)  # refuses an unknown one with its own message
        return Contender(name, "kvroute", "pinned", KVROUTE_FLAGS, replays=source)
    if kind in peer_env.PEERS and policy:
        return peer(kind, policy)
    raise ValueError(f"unknown contender {name!r} (kvroute:<policy>[+exact][:w<N>], {', '.join(f'{k}:<policy>' for k in peer_env.PEERS)}, "
                     "direct, replay:<contender>)")


@dataclass
class Running:
    contender: Contender
    base_url: str
    child: procs.Child | None = None
    argv: list[str] = field(default_factory=list)
    # kvroute's admin port serves /metrics with its decisions by policy branch.
    admin_url: str | None = None

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()


def _exact_sources(fleet_info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The fleet's model directory and KV event endpoints per backend URL."""
    tokenizer, endpoints = fleet_info.get("tokenizer"), fleet_info.get("kv_events") or {}
    if not tokenizer or not endpoints:
        raise ValueError("the exact view needs a fleet with a tokenizer and KV events (bench.simfleet "
                         "--tokenizer DIR --kv-events)")
    return tokenizer, endpoints


def vllm_router_kv_flags(fleet_info: dict[str, Any]) -> list[str]:
    """vllm-router 0.1.17's kv_aware sources: each worker's publisher (and replay), the block size,
    and the model directory it tokenizes with (`--kv-event-model` takes a local path)."""
    tokenizer, endpoints = _exact_sources(fleet_info)
    argv = ["--kv-event-model", tokenizer, "--kv-event-block-size", str(fleet_info["profile"]["block_size"])]
    for url, ep in endpoints.items():
        argv += ["--kv-event-source", f"{url}={ep['endpoint']}"]
        if ep.get("replay_endpoint"):
            argv += ["--kv-event-replay-source", f"{url}={ep['replay_endpoint']}"]
    return argv


def exact_view_flags(model: str, fleet_info: dict[str, Any]) -> list[str]:
    """kvroute's flags for the exact view of a fleet started with a tokenizer and KV events."""
    tokenizer, endpoints = _exact_sources(fleet_info)
    argv = ["--tokenizer", f"{model}={tokenizer}"]
    argv += ["--kv-events-endpoints", ",".join(f"{url}={ep['endpoint']}" for url, ep in endpoints.items())]
    replay = [f"{url}={ep['replay_endpoint']}" for url, ep in endpoints.items() if ep.get("replay_endpoint")]
    if replay:
        argv += ["--kv-events-replay-endpoints", ",".join(replay)]
    return argv


async def start(contender: Contender, backend_urls: Sequence[str], log_dir: Path, model: str,
                fleet_info: dict[str, Any] | None = None) -> Running:
    """Start `contender` in front of `backend_urls`; returns once it proxies a model listing.
    `fleet_info` (the sim fleet's first line) is what an exact-view kvroute is pointed at."""
    if contender.kind == "direct":
        # The floor: clients talk to the first backend themselves, no hop in between.
        return Running(contender, backend_urls[0])
    port = procs.free_port()
    admin_url = None
    if contender.kind == "kvroute":
        admin_port = procs.free_port()
        argv = [sys.executable, "-m", "kvroute.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--admin-port", str(admin_port), "--policy", contender.policy, *contender.flags]
        for url in backend_urls:
            argv += ["--backend", url]
        if contender.exact:
            argv += exact_view_flags(model, fleet_info or {})
        admin_url = f"http://127.0.0.1:{admin_port}"
    elif contender.kind in peer_env.PEERS:
        # Their Prometheus exporters would otherwise take the fixed port 29000.
        argv = [*peer_env.PEERS[contender.kind].ensure(), "--host", "127.0.0.1", "--port", str(port),
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(procs.free_port()),
                "--policy", contender.policy, "--worker-urls", *backend_urls, *contender.flags]
        if contender.exact:
            argv += vllm_router_kv_flags(fleet_info or {})
    else:
        raise ValueError(f"unknown contender kind {contender.kind!r}")
    child = procs.Child(contender.name, argv, log_dir / f"{contender.name.replace(':', '_')}.log")
    await child.start()
    base_url = f"http://127.0.0.1:{port}"
    if contender.kind in peer_env.PEERS:
        # Each lists models its own way; /readiness says when every worker passed its health check.
        ready_url, ready_text = base_url + "/readiness", '"status":"ready"'
    else:
        ready_url, ready_text = base_url + "/v1/models", model
    try:
        await procs.wait_http(ready_url, child, timeout_s=60.0, body_contains=ready_text)
        if contender.kind == "kvroute" and contender.workers > 1:
            await _all_workers_up(child, contender.workers)
    except BaseException:
        await child.stop()
        raise
    return Running(contender, base_url, child, argv, admin_url)


async def _all_workers_up(child: procs.Child, workers: int, timeout_s: float = 60.0) -> None:
    """The model listing answered through one worker; the others may still be starting (loading a
    tokenizer takes a second each), which would put their start-up CPU inside the point and leave
    their share of the first requests to the ready ones. Every worker but 0 writes its snapshot
    file once it serves (docs/operations.md, "With workers > 1")."""
    from kvroute.workers import run_file

    assert child.proc is not None
    prefix = run_file("worker", child.proc.pid)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(list(prefix.parent.glob(f"{prefix.name}-*-metrics.json"))) < workers - 1:
        if child.proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{child.name}: not every one of {workers} workers started\n{child.log_tail()}")
        await asyncio.sleep(0.1)


def versions() -> dict[str, str]:
    """Versions of every contender's software, for the report."""
    from importlib import metadata

    import subprocess

    out = {"kvroute": metadata.version("kvroute"), **{p.package: p.version for p in peer_env.PEERS.values()}}
    # The package version does not move while the project is built; the commit does.
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent)
    if git.returncode == 0:
        out["kvroute commit"] = git.stdout.strip()
    try:
        import kvroute

        out["kvroute._native"] = str(getattr(kvroute, "__version__", "?"))
    except ImportError:
        pass
    return out
