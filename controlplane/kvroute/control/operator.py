"""The one place that applies the operator's changes to a gateway: policy and weights, admission
limits, drain and undrain, adding and removing a backend.

The admin API calls it for a change made on worker 0; the shared admin state calls it to bring every
worker in line with the recorded changes (control/shared_state.py). Neither writes a change itself.
Nothing is kept here beside the core and the fleet: the policy, its weights and the admission limits
are read back from the core, so a limit has one home and `Settings` holds only the start values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from kvroute import _native
from kvroute.control.fleet import Backend, backend_id_for

if TYPE_CHECKING:
    from kvroute._native import Priority, Router
    from kvroute.config import Settings
    from kvroute.control.fleet import Fleet

TIERS: tuple[Priority, ...] = ("high", "normal", "low")
# The admission limits under their settings names; 0 means "no limit" (the core spells it None).
LIMITS: tuple[str, ...] = tuple(f"{kind}_{tier}" for tier in TIERS for kind in ("queue_threshold", "max_wait_ms"))


class OperatorError(Exception):
    """A change refused whole: nothing was applied."""


class Invalid(OperatorError):
    pass


class NotFound(OperatorError):
    pass


class Conflict(OperatorError):
    pass


def start_limits(settings: Settings) -> dict[str, float]:
    """The admission limits as configured at start."""
    return {key: getattr(settings, key) for key in LIMITS}


class Operator:
    def __init__(self, router: Router, fleet: Fleet, add_backend: Callable[[str, str], Awaitable[Backend]]) -> None:
        self.router, self.fleet = router, fleet
        self._add_backend = add_backend  # adds and polls once (ControlPlane.add_backend)

    # -- policy and admission ----------------------------------------------------------------

    def limits(self) -> dict[str, float]:
        """The admission limits in force, as the core holds them."""
        tiers = self.router.snapshot()["tiers"]
        return {**{f"queue_threshold_{t}": tiers[t]["max_queue"] or 0 for t in TIERS},
                **{f"max_wait_ms_{t}": tiers[t]["max_wait_ms"] or 0.0 for t in TIERS}}

    def policy(self) -> dict[str, Any]:
        name, weights = self.router.policy()
        return {"policy": name, "weights": dict(weights), **self.limits()}

    def set_policy(self, name: str | None = None, weights: Mapping[str, float] | None = None,
                   limits: Mapping[str, float] | None = None) -> None:
        """Change the policy and/or some weights and/or some admission limits.

        A new policy starts from its own defaults plus the weights given; the same policy keeps the
        weights not given. The core checks name and weights and applies all of them or raises.
        """
        unknown = sorted(set(limits or ()) - set(LIMITS))
        if unknown:
            raise Invalid(f"unknown admission limit {unknown[0]!r}")
        if name is not None or weights is not None:
            current, current_weights = self.router.policy()
            wanted = name or current
            merged = {**current_weights, **(weights or {})} if wanted == current else dict(weights or {})
            try:
                self.router.set_policy(wanted, **merged)
            except (_native.KvrouteError, TypeError, ValueError) as exc:
                raise Invalid(f"policy: {exc}") from None
        if limits:
            self.set_limits({**self.limits(), **limits})

    def set_limits(self, limits: Mapping[str, float]) -> None:
        """Push all six limits into the core; 0 becomes the core's None (its 0 would shed everything)."""
        for tier in TIERS:
            self.router.set_admission(tier, max_queue=int(limits[f"queue_threshold_{tier}"]) or None,
                                      max_wait_ms=float(limits[f"max_wait_ms_{tier}"]) or None)

    # -- backends --------------------------------------------------------------------------

    def backend(self, backend_id: str) -> Backend:
        backend = self.fleet.get(backend_id)
        if backend is None:
            raise NotFound(f"no backend {backend_id!r}")
        return backend

    def drain(self, backend_id: str, drained: bool = True) -> None:
        self.backend(backend_id)
        self.fleet.set_drained(backend_id, drained)

    async def add(self, url: str) -> str:
        """Add a backend (or revive one retiring) and poll it once; its id."""
        try:
            backend_id = backend_id_for(url)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        existing = self.fleet.get(backend_id)
        if existing is not None and not existing.retiring:
            raise Conflict(f"backend {backend_id!r} exists (source {existing.source})")
        await self._add_backend(url, "admin")
        return backend_id

    def remove(self, *backend_ids: str) -> None:
        """Drain now; what has nothing in flight leaves the core at once, the rest when it finishes."""
        for backend_id in backend_ids:
            self.backend(backend_id)
        for backend_id in backend_ids:
            self.fleet.retire(backend_id)
        if backend_ids:
            self.fleet.tick()


__all__ = ["LIMITS", "TIERS", "Conflict", "Invalid", "NotFound", "Operator", "OperatorError", "start_limits"]
