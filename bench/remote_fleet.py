"""An already running OpenAI-compatible fleet (`python -m bench.run --fleet-urls URL,URL,...`).

The bench starts and stops nothing here: the backends (a real GPU vLLM deployment, or `kvroute sim`
instances) are someone else's. At start every URL must answer /v1/models, and they must serve one
model, whose name the workloads use. Between points `reset()` empties the prefix caches where the
backend allows it (vLLM serves `POST /reset_prefix_cache` only with VLLM_SERVER_DEV_MODE=1; the
kvroute simulator always does); where it does not, the run says so once and records it in its
metadata (`meta.fleet.remote.cache_reset`) and the report's fleet line, since its points then
start with warm caches. Counters come from each backend's /metrics, as for the fleets the bench
starts. The fleet runs in real time: the suite's time scale is 1.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Sequence

import aiohttp

TIMEOUT_S = 10.0


def parse_urls(text: str) -> list[str]:
    """`URL,URL,...` -> base URLs without a trailing slash (or /v1); at least one, no repeats."""
    urls = []
    for raw in text.split(","):
        url = raw.strip().rstrip("/")
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"fleet URL {raw.strip()!r} is not http(s)://host:port")
        if url in urls:
            raise ValueError(f"fleet URL {url} is named twice")
        urls.append(url)
    if not urls:
        raise ValueError("--fleet-urls names no URL")
    return urls


class RemoteFleet:
    """Same face as harness.FleetProc: start(), reset(), urls, model, info, pid(), stop()."""

    def __init__(self, urls: Sequence[str], log: Any = sys.stderr) -> None:
        self.urls = list(urls)
        self.log = log
        self.model = ""
        self.can_reset = False
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            models = {url: await self._model(session, url) for url in self.urls}
            if len(set(models.values())) > 1:
                raise RuntimeError("the fleet's URLs serve different models: "
                                   + ", ".join(f"{u} {m!r}" for u, m in models.items()))
            self.model = models[self.urls[0]]
            # Probing is a reset: the first point would ask for one anyway.
            refused = await self._reset_all(session)
        self.can_reset = refused is None
        cache_reset = "yes" if self.can_reset else f"no: {refused}"
        if not self.can_reset:
            print(f"remote fleet: prefix caches cannot be reset ({refused}); every point after the first "
                  "starts with the caches the previous ones left (vLLM: run it with VLLM_SERVER_DEV_MODE=1)",
                  file=self.log, flush=True)
        self.info = {"urls": self.urls, "kv_blocks": None,
                     # The report's fleet line shows this name: it says whether the caches were reset.
                     "profile": {"name": f"already running backends (model `{self.model}`, prefix caches "
                                         + ("reset between points)" if self.can_reset else f"NOT reset: {refused})")},
                     "remote": {"urls": self.urls, "model": self.model, "cache_reset": cache_reset}}

    async def _model(self, session: aiohttp.ClientSession, url: str) -> str:
        try:
            async with session.get(url + "/v1/models") as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                body = await resp.json(content_type=None)
            return str(body["data"][0]["id"])
        except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, ValueError, KeyError, IndexError,
                TypeError) as exc:
            raise RuntimeError(f"fleet URL {url} does not answer GET /v1/models with a model list: "
                               f"{type(exc).__name__}: {exc}") from exc

    async def _reset_all(self, session: aiohttp.ClientSession) -> str | None:
        """POST /reset_prefix_cache to every URL; None if all took it, else why the first did not."""
        for url in self.urls:
            try:
                async with session.post(url + "/reset_prefix_cache") as resp:
                    if resp.status != 200:
                        return f"{url}/reset_prefix_cache: HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return f"{url}/reset_prefix_cache: {type(exc).__name__}: {exc}"
        return None

    async def reset(self) -> None:
        if not self.can_reset:
            return  # said once at start, and recorded in info["remote"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0)) as session:
            refused = await self._reset_all(session)
        if refused is not None:
            raise RuntimeError(f"fleet reset failed: {refused}")

    def pid(self) -> int | None:
        return None  # not our process: its CPU time is not measured

    async def stop(self) -> None:
        pass  # someone else's fleet
