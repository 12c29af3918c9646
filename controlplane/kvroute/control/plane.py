"""Runs the control plane's loops for a gateway: discovery, metrics/health polling, circuit cool-downs.

Owns the HTTP connection pool the process uses for polling (opened in start, closed in stop) and every
background task it starts, so stop() leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Coroutine

from kvroute.admin import worker_snapshots
from kvroute.control import discovery
from kvroute.control.fleet import Backend
from kvroute.control.poller import Poller
from kvroute.control.shared_state import SharedAdminState, state_path
from kvroute.proxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from kvroute._native import Priority
    from kvroute.gateway import Gateway

log = logging.getLogger("kvroute.control")

TIERS: tuple[Priority, ...] = ("high", "normal", "low")


def apply_admission(gateway: Gateway) -> None:
    """Push the per-tier admission limits in settings into the core (at start and on admin changes).

    0 in settings means "no limit", which the core spells None (its 0 would shed everything).
    """
    settings = gateway.settings
    for tier in TIERS:
        gateway.router.set_admission(tier, max_queue=getattr(settings, f"queue_threshold_{tier}") or None,
                                     max_wait_ms=getattr(settings, f"max_wait_ms_{tier}") or None)


class ControlPlane:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.client: UpstreamPool | None = None
        self.poller: Poller | None = None
        self.source: discovery.Discovery | None = None
        self.shared = SharedAdminState(gateway, state_path(gateway.settings))
        # serve --workers N: every worker but 0 reports its numbers here, worker 0 adds them up.
        self.snapshots = worker_snapshots.for_worker(gateway.settings)
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
        settings = self.gateway.settings
        fleet = self.gateway.fleet
        apply_admission(self.gateway)
        # Its own pool, not the data plane's: poll connections stay warm whatever clients do, and
        # the same raw client keeps a poll round from showing in the requests' tail latency.
        self.client = UpstreamPool(connect_timeout=settings.poll_timeout, max_idle_per_target=4)
        self.poller = Poller(fleet, self.client, settings, errors=getattr(self.gateway, "observer", None))
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
            self._spawn(self._follow_admin_state(), "admin state")
        await self.poller.poll_once()
        self._spawn(self._poll_forever(), "poller")
        if self._reports_snapshots():
            self._spawn(self._write_snapshots(), "worker snapshots")

    async def _poll_forever(self) -> None:
        assert self.poller is not None
        await asyncio.sleep(self.poller.interval)
        await self.poller.run()

    async def _follow_admin_state(self) -> None:
        await asyncio.sleep(self.gateway.settings.poll_interval)
        await self.shared.run(self.gateway.settings.poll_interval)

    def _reports_snapshots(self) -> bool:
        return self.snapshots is not None and not self.gateway.with_admin

    def _write_snapshot(self) -> None:
        assert self.snapshots is not None
        gateway = self.gateway
        self.snapshots.write(worker_snapshots.take(gateway.observer, gateway.fleet, self.snapshots.worker))

    async def _write_snapshots(self) -> None:
        while True:
            try:
                self._write_snapshot()
            except Exception:  # a full disk must not stop the worker; the next round tries again
                log.exception("writing this worker's metrics snapshot failed")
            await asyncio.sleep(self.gateway.settings.poll_interval)

    async def add_backend(self, url: str, source: str = "admin") -> Backend:
        """Add a backend and poll it once before returning, so the caller sees its real state."""
        backend = self.gateway.fleet.add(url, source=source, healthy=None)
        if self.poller is not None:
            await self.poller.poll_backend(backend)
        return backend

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.poller is not None:
            await self.poller.close()
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._reports_snapshots():
            # Stopped after the proxy: the requests it finished while draining are counted too.
            # The supervisor removes the run's files once every worker has stopped.
            with contextlib.suppress(OSError):
                self._write_snapshot()
