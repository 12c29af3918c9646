"""Runs the control plane's loops for a gateway: discovery, metrics/health polling, circuit cool-downs.

Owns the HTTP connection pool the process uses for polling (opened in start, closed in stop) and every
background task it starts, so stop() leaves nothing running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Coroutine

from kvroute.control import discovery
from kvroute.control.fleet import Backend
from kvroute.control.kv_feed import KVFeed
from kvroute.control.operator import Operator, start_limits
from kvroute.control.poller import Poller
from kvroute.control.shared_state import SharedAdminState, state_path
from kvroute.proxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from kvroute._native import Router
    from kvroute.config import Settings
    from kvroute.control.fleet import Fleet
    from kvroute.control.poller import PollErrorSink

log = logging.getLogger("kvroute.control")

class ControlPlane:
    def __init__(self, settings: Settings, router: Router, fleet: Fleet, errors: PollErrorSink | None = None) -> None:
        self.settings, self.router, self.fleet = settings, router, fleet
        self.errors = errors  # told of every failed poll (the Observer)
        self.client: UpstreamPool | None = None
        self.poller: Poller | None = None
        self.source: discovery.Discovery | None = None
        self.operator = Operator(router, fleet, self.add_backend)
        self.shared = SharedAdminState(self.operator, state_path(settings))
        self.kv_feed = KVFeed(settings, router, fleet)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("control task %s died", task.get_name(), exc_info=task.exception())

    def _poll_soon(self, backend: Backend) -> None:
        """Poll a newly discovered backend now rather than at the next round, so it serves sooner."""
        if self.poller is not None:
            self._spawn(self.poller.poll_backend(backend), f"probe {backend.id}")

    async def start(self) -> None:
        settings, fleet = self.settings, self.fleet
        self.operator.set_limits(start_limits(settings))
        # Its own pool, not the data plane's: poll connections stay warm whatever clients do, and
        # the same raw client keeps a poll round from showing in the requests' tail latency.
        self.client = UpstreamPool(connect_timeout=settings.poll_timeout, max_idle_per_target=4,
                                   ca_file=settings.backend_ca_file, verify=settings.backend_tls_verify)
        self.poller = Poller(fleet, self.client, settings, errors=self.errors)
        discovery.Reconciler(fleet, "static").apply(
            {target.url: target for target in (discovery.Target(url.rstrip("/")) for url in settings.backend)})
        if self.source is None:  # a test may have put a source with an injected resolver here
            self.source = discovery.from_settings(settings)
        if self.source is not None:
            first = asyncio.Event()
            reconciler = discovery.Reconciler(fleet, self.source.source, on_added=self._poll_soon)

            def apply(targets: discovery.Targets) -> None:
                reconciler.apply(targets)
                first.set()

            self._spawn(self.source.run(apply), f"discovery {self.source.source}")
            # Give the source one poll interval to deliver its first set, so the first poll sees it;
            # an unreachable source must not hold the router's start-up longer than that.
            try:
                async with asyncio.timeout(settings.poll_interval):
                    await first.wait()
            except TimeoutError:
                log.warning("%s discovery has not answered yet; starting without it", self.source.source)
        if self.shared.path is not None:
            await self.shared.refresh()  # what the admin API changed before this process started
            self._spawn(self.shared.run(self.settings.poll_interval), "admin state")
        await self.poller.poll_once()
        self._spawn(self.poller.run(), "poller")  # the first round after one interval: one was just done
        if self.kv_feed.enabled:
            # Each backend is subscribed once its first poll named its model (the root of its chains).
            self._spawn(self.kv_feed.run(settings.poll_interval), "kv events")

    async def add_backend(self, url: str, source: str = "admin") -> Backend:
        """Add a backend and poll it once before returning, so the caller sees its real state."""
        backend = self.fleet.add(url, source=source, healthy=None)
        if self.poller is not None:
            await self.poller.poll_backend(backend)
        return backend

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.kv_feed.close()
        if self.poller is not None:
            await self.poller.close()
        if self.client is not None:
            self.client.close()
            self.client = None
