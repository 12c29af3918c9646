"""The fleet registry: which backends exist, where they are, what they serve, how they are doing.

The native core knows backends only by id; this registry maps ids to URLs for the proxy and is the
one place the control plane changes the fleet, so the core and the registry never disagree. Every
change of a backend's routable state goes through `push`, which hands the core plain values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import urlsplit

from kvroute.config import Settings
from kvroute.control.health import CircuitBreaker, CircuitState, Clock, Liveness
from kvroute.control.metrics import BackendMetrics

if TYPE_CHECKING:
    from kvroute._native import Router


def backend_id_for(url: str) -> str:
    """host:port of a base URL: short, stable, and safe in an admin API path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"backend URL must be http(s)://host[:port], got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


@dataclass
class Backend:
    id: str
    url: str
    liveness: Liveness  # thresholds from the settings (Fleet.add): no second set of defaults here
    breaker: CircuitBreaker
    source: str = "static"
    models: list[str] = field(default_factory=list)
    # Operator drain (admin API) and discovery drain (terminating endpoint) are kept apart so that an
    # undrain by the operator does not revive an endpoint Kubernetes is shutting down.
    drained: bool = False
    discovery_draining: bool = False
    # Gone from its discovery source: drained now, removed once nothing is in flight on it.
    retiring: bool = False
    metrics: BackendMetrics | None = None
    last_poll_ok: float | None = None
    last_error: str = ""
    models_known: bool = False
    page_digest: int | None = None

    @property
    def draining(self) -> bool:
        return self.drained or self.discovery_draining or self.retiring

    @property
    def healthy(self) -> bool:
        return self.liveness.healthy

    @property
    def stale(self) -> bool:
        return self.liveness.stale

    @property
    def circuit(self) -> CircuitState:
        return self.breaker.state

    def routable(self) -> bool:
        return self.healthy and not self.draining and not self.breaker.is_open


class Fleet:
    def __init__(self, router: Router, settings: Settings | None = None, *, clock: Clock = time.monotonic) -> None:
        self.router = router
        self.clock = clock
        self.settings = settings or Settings()  # the health thresholds are defined once, in config
        self._backends: dict[str, Backend] = {}

    def add(self, url: str, *, source: str = "static", models: Iterable[str] = (),
            healthy: bool | None = True) -> Backend:
        """Register a backend (or return the one already at that address, revived if it was retiring).

        healthy=None: not routable until its first successful poll (what the control plane uses).
        """
        url = url.rstrip("/")
        backend_id = backend_id_for(url)
        existing = self._backends.get(backend_id)
        if existing is not None:
            if existing.retiring:
                existing.retiring = False
                existing.source = source
                self.push(existing)
            return existing
        backend = Backend(
            id=backend_id,
            url=url,
            source=source,
            models=list(models),
            models_known=bool(models),
            liveness=Liveness(self.settings.unhealthy_after, self.settings.healthy_after, healthy=healthy),
            breaker=CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_cooldown, self.clock),
        )
        self._backends[backend.id] = backend
        self.push(backend)
        return backend

    def remove(self, backend_id: str) -> None:
        if self._backends.pop(backend_id, None) is not None:
            self.router.remove_backend(backend_id)

    def get(self, backend_id: str) -> Backend | None:
        return self._backends.get(backend_id)

    def all(self) -> list[Backend]:
        return list(self._backends.values())

    def push(self, backend: Backend) -> None:
        """Hand the core this backend's current routable state and load, as plain values."""
        metrics = backend.metrics or BackendMetrics()
        self.router.upsert_backend(
            backend.id,
            models=backend.models,
            healthy=backend.healthy,
            draining=backend.draining,
            circuit_open=backend.breaker.is_open,
            waiting=metrics.waiting,
            running=metrics.running,
            kv_usage=metrics.kv_usage,
            num_gpu_blocks=metrics.num_gpu_blocks,
            block_size=metrics.block_size,
        )

    def report(self, backend_id: str, ok: bool, failure: str | None = None) -> None:
        """Outcome of one upstream attempt, for passive health (circuit breaking).

        failure is one of "connect", "reset", "timeout", "http_5xx" when ok is False. Every kind counts
        the same: each means the backend failed a request the router gave it.
        """
        backend = self._backends.get(backend_id)
        if backend is not None and backend.breaker.record(ok):
            self.push(backend)

    def set_drained(self, backend_id: str, drained: bool) -> Backend:
        backend = self._backends[backend_id]
        if backend.drained != drained:
            backend.drained = drained
            self.push(backend)
        return backend

    def tick(self) -> None:
        """Periodic housekeeping: circuits whose cool-down ended go half-open; retired backends with
        nothing in flight leave the core (removing them earlier would orphan their requests)."""
        for backend in self.all():
            if backend.breaker.tick():
                self.push(backend)
            if backend.retiring and self.router.in_flight(backend.id) == 0:
                self.remove(backend.id)

    def retire(self, backend_id: str) -> None:
        backend = self._backends.get(backend_id)
        if backend is not None and not backend.retiring:
            backend.retiring = True
            self.push(backend)

    def state(self, backend: Backend) -> dict[str, Any]:
        """Plain values for the admin API and the status page."""
        metrics = backend.metrics or BackendMetrics()
        return {
            "id": backend.id,
            "url": backend.url,
            "source": backend.source,
            "models": list(backend.models),
            "healthy": backend.healthy,
            "stale": backend.stale,
            "draining": backend.draining,
            "drained": backend.drained,
            "retiring": backend.retiring,
            "circuit": backend.circuit.value,
            "routable": backend.routable(),
            "in_flight": self.router.in_flight(backend.id) if backend.id in self._backends else 0,
            "running": metrics.running,
            "waiting": metrics.waiting,
            "kv_usage": metrics.kv_usage,
            "num_gpu_blocks": metrics.num_gpu_blocks,
            "block_size": metrics.block_size,
            "prefix_cache_hit_rate": metrics.prefix_hit_rate,
            "consecutive_poll_failures": backend.liveness.failures,
            "last_error": backend.last_error,
        }


__all__ = ["Backend", "Fleet", "backend_id_for"]
