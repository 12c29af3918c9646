"""Assembles one router process: the native core, the fleet, the control plane, the proxy, the admin API."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Sequence

from kvroute._native import Router
from kvroute.config import Settings, parse_settings
from kvroute.control.fleet import Fleet
from kvroute.control.plane import ControlPlane

log = logging.getLogger("kvroute.gateway")


class Gateway:
    """Everything one router process holds; components receive it instead of reaching for globals."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.router = Router(
            settings.policy,
            block_tokens=settings.block_tokens,
            bytes_per_token=settings.bytes_per_token,
            seed=settings.seed,
            wait_queue_size=settings.wait_queue_size,
        )
        self.fleet = Fleet(self.router)
        self.control = ControlPlane(self)
        self.proxy: Any = None
        self.admin: Any = None

    async def start(self) -> None:
        from kvroute.admin import server as admin_server
        from kvroute.proxy import server as proxy_server

        await self.control.start()
        self.proxy = await proxy_server.start(self)
        self.admin = await admin_server.start(self)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.close(self.settings.grace_period)
        if self.admin is not None:
            await self.admin.close()
        await self.control.stop()


async def serve(settings: Settings, started: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM; `started` is set once both ports accept connections."""
    gateway = Gateway(settings)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("kvroute listening on %s:%s (admin %s:%s)", settings.host, settings.port,
             settings.admin_host, settings.admin_port)
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def main(argv: Sequence[str]) -> int:
    import uvloop

    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvloop.run(serve(settings))
    return 0
