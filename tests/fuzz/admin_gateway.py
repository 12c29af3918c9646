"""A whole gateway (control plane, proxy, admin API) in front of simulated vLLM servers, run on its
own event loop in a thread: schemathesis drives the admin API synchronously, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Iterator

from kvroute.sim import SimFleet
from tests.control.support import full_gateway


@contextlib.contextmanager
def running_gateway(**settings: object) -> Iterator[tuple[str, list[str]]]:
    """(admin base URL, the simulated backends' URLs) while the gateway runs."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        box["stop"] = (asyncio.get_running_loop(), stop)
        try:
            async with SimFleet(instances=2, per_token_delay=0.001, default_max_tokens=4) as sims, \
                    full_gateway(backend=sims.urls[:1], **settings) as gateway:
                assert gateway.admin is not None
                box["urls"] = (f"http://127.0.0.1:{gateway.admin.port}", sims.urls)
                ready.set()
                await stop.wait()
        except BaseException as exc:  # reported to the test instead of dying silently in the thread
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="admin-gateway", daemon=True)
    thread.start()
    if not ready.wait(60):
        raise AssertionError("the gateway did not start within 60 s")
    if "error" in box:
        raise AssertionError(f"the gateway failed to start: {box['error']!r}")
    try:
        yield box["urls"]  # type: ignore[misc]
    finally:
        loop, stop = box["stop"]  # type: ignore[misc]
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
