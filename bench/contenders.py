"""The routers a benchmark compares, each started fresh in front of the same fleet.

A contender is a name plus how to start it; `start()` returns the base URL clients use and a handle
to stop it. Every gateway runs as its own process so that none shares an event loop (or a core's
time slice) with the load generator.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench import peer_env, procs


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # "kvroute", "direct" or a peer gateway's kind (bench/peer_env.PEERS)
    policy: str = ""
    # Extra command-line flags, recorded with the results as the contender's settings.
    flags: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "policy": self.policy, "flags": list(self.flags)}


KVROUTE_POLICIES = ("round_robin", "least_load", "prefix_hash", "cost")
PEER_POLICIES = {"sglang": ("cache_aware", "round_robin"), "smg": ("cache_aware", "round_robin"),
                 "vllm-router": ("cache_aware", "kv_aware", "round_robin")}

# kvroute's bench settings: the control plane polls backends often enough that its view of load is
# current at the simulated time scales used here; logs quiet so that logging costs no CPU.
KVROUTE_FLAGS = ("--log-level", "warning")
# The peers' defaults, logs quiet; retries and circuit breakers stay on as they ship.
PEER_FLAGS = {"sglang": ("--log-level", "warn"), "smg": ("--log-level", "warn"),
              "vllm-router": ("--log-level", "warning")}


def kvroute(policy: str) -> Contender:
    return Contender(f"kvroute:{policy}", "kvroute", policy, KVROUTE_FLAGS)


def peer(kind: str, policy: str) -> Contender:
    return Contender(f"{kind}:{policy}", kind, policy, PEER_FLAGS[kind])


def sglang(policy: str) -> Contender:
    return peer("sglang", policy)


DIRECT = Contender("direct", "direct")


def by_name(name: str) -> Contender:
    kind, _, policy = name.partition(":")
    if name == "direct":
        return DIRECT
    if kind == "kvroute" and policy:
        return kvroute(policy)
    if kind in peer_env.PEERS and policy:
        return peer(kind, policy)
    raise ValueError(f"unknown contender {name!r} (kvroute:<policy>, {', '.join(f'{k}:<policy>' for k in peer_env.PEERS)}, "
                     "direct)")


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


async def start(contender: Contender, backend_urls: Sequence[str], log_dir: Path, model: str) -> Running:
    """Start `contender` in front of `backend_urls`; returns once it proxies a model listing."""
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
        admin_url = f"http://127.0.0.1:{admin_port}"
    elif contender.kind in peer_env.PEERS:
        # Their Prometheus exporters would otherwise take the fixed port 29000.
        argv = [*peer_env.PEERS[contender.kind].ensure(), "--host", "127.0.0.1", "--port", str(port),
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(procs.free_port()),
                "--policy", contender.policy, "--worker-urls", *backend_urls, *contender.flags]
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
    except BaseException:
        await child.stop()
        raise
    return Running(contender, base_url, child, argv, admin_url)


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
