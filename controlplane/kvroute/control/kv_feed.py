"""Feeds each backend's vLLM KV events into the routing core: the exact cache view (issue 13).

`KVFeed.sync()` keeps one subscription (control/kv_events.py) per backend that has an event
endpoint (settings `kv_events_endpoints`, `kv_events_port` or `kv_events_port_offset`) and whose served model is
known, and drops those of backends that left the fleet. The sink hands each decoded batch to the
core as plain tuples (`Router.kv_apply`); a subscriber reset becomes `Router.kv_reset`.

Every routing process subscribes for itself: vLLM's publisher is a PUB socket, so each
subscriber gets every batch, and every worker or replica builds the same view from the same
events with no channel between them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Sequence

from kvroute.control.kv_decode import Cleared, Event, Removed, Stored
from kvroute.control.kv_events import KVEventSubscriber, endpoints_for

if TYPE_CHECKING:
    from kvroute._native import Router
    from kvroute.config import Settings
    from kvroute.control.fleet import Fleet

log = logging.getLogger("kvroute.kv_events")


def as_tuples(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """Decoded events in the core's tuple form; consecutive blocks of one BlockStored are regrouped
    (the decoder splits them per block), so the core rehashes a run in one pass."""
    out: list[tuple[Any, ...]] = []
    for ev in events:
        if isinstance(ev, Stored):
            last = out[-1] if out else None
            if (last is not None and last[0] == "stored" and last[1][-1] == ev.parent_hash
                    and last[4] == ev.block_size and last[5] == ev.lora_name and last[6] == ev.medium):
                last[1].append(ev.block_hash)
                last[3].extend(ev.token_ids)
            else:
                out.append(("stored", [ev.block_hash], ev.parent_hash, list(ev.token_ids), ev.block_size,
                            ev.lora_name, ev.medium))
        elif isinstance(ev, Removed):
            out.append(("removed", list(ev.block_hashes), ev.medium))
        elif isinstance(ev, Cleared):
            out.append(("cleared",))
    return out


class RouterSink:
    """KVEventSink into the core. The base model of a backend roots its chains (blocks stored
    without a LoRA adapter): the first model it lists."""

    def __init__(self, router: Router, fleet: Fleet) -> None:
        self.router, self.fleet = router, fleet
        self._warned_sizes: set[str] = set()

    def apply(self, backend_id: str, events: Sequence[Event]) -> None:
        backend = self.fleet.get(backend_id)
        if backend is None or not backend.models:
            return  # gone, or its model is not known yet (sync subscribes only once it is)
        self.router.kv_apply(backend_id, backend.models[0], as_tuples(events))
        self._check_block_size(backend_id, events)

    def reset(self, backend_id: str) -> None:
        if self.fleet.get(backend_id) is not None:
            self.router.kv_reset(backend_id)

    def _check_block_size(self, backend_id: str, events: Sequence[Event]) -> None:
        if backend_id in self._warned_sizes:
            return
        expected = self.fleet.settings.block_tokens
        size = next((ev.block_size for ev in events if isinstance(ev, Stored)), expected)
        if size != expected:
            self._warned_sizes.add(backend_id)
            log.warning("backend %s caches blocks of %d tokens but block_tokens is %d: its KV events cannot "
                        "match requests; set block_tokens=%d", backend_id, size, expected, size)


class KVFeed:
    def __init__(self, settings: Settings, router: Router, fleet: Fleet) -> None:
        self.settings, self.router, self.fleet = settings, router, fleet
        self.subscriber = KVEventSubscriber(RouterSink(router, fleet), replay_timeout=settings.kv_events_replay_timeout)
        self._down: set[str] = set()  # subscribed backends seen unhealthy, their view already dropped

    @property
    def enabled(self) -> bool:
        s = self.settings
        return bool(s.kv_events_endpoints or s.kv_events_port or s.kv_events_port_offset)

    def sync(self) -> None:
        """Subscribe to new backends (once their model is known), unsubscribe from departed ones."""
        s = self.settings
        present = {b.id for b in self.fleet.all()}
        subscribed = set(self.subscriber.states())
        for backend in self.fleet.all():
            if backend.id in subscribed:
                self._watch_health(backend.id, backend.healthy)
                continue
            if not backend.models:
                continue
            endpoint, replay = endpoints_for(backend.url, s.kv_events_endpoints, s.kv_events_replay_endpoints,
                                             s.kv_events_port_offset, s.kv_events_replay_port_offset,
                                             s.kv_events_port, s.kv_events_replay_port)
            if endpoint is not None:
                log.info("kv events of %s from %s (replay %s)", backend.id, endpoint, replay or "none")
                # The backend turns event-fed with its first batch, not now: a publisher that cannot
                # be reached (a wrong port, a NetworkPolicy) leaves it on the router's own guess
                # rather than crediting it with nothing. The first request routed to an idle engine
                # makes its first batch.
                self.subscriber.add(backend.id, endpoint, replay)
        for gone in subscribed - present:
            self._down.discard(gone)
            asyncio.get_running_loop().create_task(self.subscriber.remove(gone), name=f"kv-events-stop-{gone}")

    def _watch_health(self, backend_id: str, healthy: bool) -> None:
        """A backend that fails its health checks may come back as a new engine with an empty cache,
        and vLLM publishes nothing until that engine's first step: drop its view when it goes down
        (once per outage), so its first request after a restart is not routed on blocks it lost."""
        if healthy:
            self._down.discard(backend_id)
        elif backend_id not in self._down:
            self._down.add(backend_id)
            log.info("backend %s is down: its KV view is dropped until its events rebuild it", backend_id)
            self.subscriber.reset(backend_id)

    async def run(self, interval: float) -> None:
        while True:
            self.sync()
            await asyncio.sleep(interval)

    def states(self) -> dict[str, dict[str, Any]]:
        return self.subscriber.states()

    async def close(self) -> None:
        await self.subscriber.close()


__all__ = ["KVFeed", "RouterSink", "as_tuples"]
