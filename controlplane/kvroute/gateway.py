"""Assembles one router process: the native core, the fleet, the control plane, the proxy, the admin API.

`kvroute serve --workers N` runs N such processes on one port (SO_REUSEPORT; the kernel spreads
connections over them). Each worker is a whole gateway: its own native core (in-flight counts,
tickets, prefix index, wait queue), its own control plane polling the same backends, its own upstream
connection pool. They share only the listening port and the configuration. Worker 0 alone serves the
admin API: it shows worker 0's core; its changes reach every worker (control/shared_state.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from typing import Sequence

from kvroute import model_tokenizers
from kvroute._native import Router
from kvroute.admin import server as admin_server
from kvroute.admin import worker_snapshots
from kvroute.admin.observe import Observer, take
from kvroute.config import Settings, parse_settings
from kvroute.control.fleet import Fleet
from kvroute.control.plane import ControlPlane
from kvroute.logs import configure_logging
from kvroute.proxy import server as proxy_server
from kvroute.workers import WORKER_ENV, supervise

log = logging.getLogger("kvroute.gateway")

class Gateway:
    """The composition root of one router process: it builds every part and hands each the
    collaborators it needs (no part receives the Gateway itself)."""

    def __init__(self, settings: Settings, *, admin: bool = True) -> None:
        self.settings = settings
        self.router = Router(
            settings.policy,
            block_tokens=settings.block_tokens,
            bytes_per_token=settings.bytes_per_token,
            seed=settings.seed,
            wait_queue_size=settings.wait_queue_size,
        )
        if settings.policy_weights:
            self.router.set_policy(settings.policy, **settings.policy_weights)
        # Every worker builds its own Gateway, so each of serve --workers N tokenizes for itself.
        self.tokenizers = model_tokenizers.apply(self.router, settings.tokenizer)
        self.fleet = Fleet(self.router, settings)
        self.observer = Observer(self.fleet)  # the proxy records outcomes here (kvroute.admin.observe)
        self.control = ControlPlane(settings, self.router, self.fleet, errors=self.observer)
        # serve --workers N: every worker but 0 reports its numbers in a file, worker 0 adds them up.
        snapshots = worker_snapshots.for_worker(settings)
        self.observer.peers = snapshots if admin else None
        self.reported = snapshots if not admin else None
        self.proxy: proxy_server.ProxyServer | None = None
        self.admin: admin_server.AdminServer | None = None
        self.with_admin = admin
        self._reporter: asyncio.Task[None] | None = None

    def _snapshot(self) -> worker_snapshots.Snapshot:
        assert self.reported is not None
        return take(self.observer, self.fleet, self.reported.worker)

    async def start(self) -> None:
        self.observer.watch_gc()
        await self.control.start()
        self.proxy = await proxy_server.start(self.settings, self.router, self.fleet, self.observer)
        if self.with_admin:
            app = admin_server.create_app(self.settings, self.router, self.fleet, self.observer, self.control)
            self.admin = await admin_server.start(self.settings, app)
        if self.reported is not None:
            self._reporter = asyncio.get_running_loop().create_task(
                worker_snapshots.write_forever(self.reported, self._snapshot, self.settings.poll_interval),
                name="worker snapshots")

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.close(self.settings.grace_period)
        if self.admin is not None:
            await self.admin.close()
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
        await self.control.stop()
        self.observer.watch_gc(False)
        if self.reported is not None:
            # After the proxy drained: the requests it finished while draining are counted too.
            # The supervisor removes the run's files once every worker has stopped.
            with contextlib.suppress(OSError):
                self.reported.write(self._snapshot())


async def serve(settings: Settings, started: asyncio.Event | None = None, *, admin: bool = True) -> None:
    """Run until SIGINT/SIGTERM; `started` is set once both ports accept connections."""
    gateway = Gateway(settings, admin=admin)
    await gateway.start()
    # What is alive now (modules, the admin app, tokenizers, the pools) lives as long as the
    # process: taken out of the collector's scans, a full collection walks only what requests
    # left behind. Unfrozen, each one walked the whole heap and stalled the event loop, with every
    # stream in flight, for 28-49 ms (docs/benchmarks.md, "Replayed placements").
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("kvroute listening on %s:%s (admin %s)", settings.host, gateway.proxy.port,
             f"{settings.admin_host}:{gateway.admin.port}" if gateway.admin is not None else "off")
    if not settings.backend_tls_verify:
        log.warning("backend_tls_verify is off: https:// backends are not authenticated")
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def main(argv: Sequence[str]) -> int:
    import uvloop

    settings = parse_settings(argv)
    configure_logging(settings)  # --log-format text|json, request id on every line
    worker = os.environ.get(WORKER_ENV)
    if settings.workers > 1 and worker is None:
        return supervise(settings, argv)
    uvloop.run(serve(settings, admin=worker in (None, "0")))
    return 0
