"""kvroute: a KV-cache-aware router for vLLM fleets.

The routing core is native (`kvroute._native`, built from rust/); this package re-exports its
public API so callers write `from kvroute import Router, Routed, KvrouteError`.
"""

from kvroute._native import (
    BRANCHES,
    POLICIES,
    REASONS,
    SCORERS,
    InvalidConfig,
    KvrouteError,
    MalformedRequest,
    Queued,
    RateLimiter,
    Rejected,
    Routed,
    Router,
    UnknownBackend,
    UnknownTicket,
    UnknownWait,
    __version__,
)

__all__ = [
    "BRANCHES",
    "POLICIES",
    "REASONS",
    "SCORERS",
    "InvalidConfig",
    "KvrouteError",
    "MalformedRequest",
    "Queued",
    "RateLimiter",
    "Rejected",
    "Routed",
    "Router",
    "UnknownBackend",
    "UnknownTicket",
    "UnknownWait",
    "__version__",
]
