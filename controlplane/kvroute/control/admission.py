"""The per-tier admission limits of settings, pushed into the core (at start and on admin changes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvroute._native import Priority, Router
    from kvroute.config import Settings

TIERS: tuple[Priority, ...] = ("high", "normal", "low")


def apply_admission(router: Router, settings: Settings) -> None:
    """0 in settings means "no limit", which the core spells None (its 0 would shed everything)."""
    for tier in TIERS:
        router.set_admission(tier, max_queue=getattr(settings, f"queue_threshold_{tier}") or None,
                             max_wait_ms=getattr(settings, f"max_wait_ms_{tier}") or None)


__all__ = ["TIERS", "apply_admission"]
