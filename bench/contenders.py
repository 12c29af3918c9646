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

from bench import procs, sglang_env


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # "kvroute" | "sglang" | "direct"
    policy: str = ""
    # Extra command-line flags, recorded with the results as the contender's settings.
    flags: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "policy": self.policy, "flags": list(self.flags)}


KVROUTE_POLICIES = ("round_robin", "least_load", "prefix_hash", "cost")
SGLANG_POLICIES = ("cache_aware", "round_robin")

# kvroute's bench settings: the control plane polls backends often enough that its view of load is
# current at the simulated time scales used here; logs quiet so that logging costs no CPU.
KVROUTE_FLAGS = ("--log-level", "warning")
# SGLang's defaults except what its documentation says to set for non-SGLang workers; retries and the
# circuit breaker stay on as they ship.
SGLANG_FLAGS = ("--log-level", "warn")


def kvroute(policy: str) -> Contender:
    return Contender(f"kvroute:{policy}", "kvroute", policy, KVROUTE_FLAGS)


def sglang(policy: str) -> Contender:
    return Contender(f"sglang:{policy}", "sglang", policy, SGLANG_FLAGS)


DIRECT = Contender("direct", "direct")


def by_name(name: str) -> Contender:
    kind, _, policy = name.partition(":")
    if name == "direct":
        return DIRECT
    if kind == "kvroute" and policy:
        return kvroute(policy)
    if kind == "sglang" and policy:
        return sglang(policy)
    raise ValueError(f"unknown contender {name!r} (kvroute:<policy>, sglang:<policy>, direct)")


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
    elif contender.kind == "sglang":
        python = sglang_env.ensure()
        # Its Prometheus exporter would otherwise take the fixed port 29000 on every host address.
        argv = [str(python), "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(procs.free_port()),
                "--policy", contender.policy, "--worker-urls", *backend_urls, *contender.flags]
    else:
        raise ValueError(f"unknown contender kind {contender.kind!r}")
    child = procs.Child(contender.name, argv, log_dir / f"{contender.name.replace(':', '_')}.log")
    await child.start()
    base_url = f"http://127.0.0.1:{port}"
    if contender.kind == "sglang":
        # The gateway lists its own model names ("unknown" for a vLLM worker without /model_info);
        # /readiness says when every worker passed its health check.
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

    out = {"kvroute": metadata.version("kvroute"), "sglang-router": sglang_env.SGLANG_ROUTER_VERSION}
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
