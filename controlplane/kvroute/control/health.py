"""Pure state machines for a backend's health: poll-based liveness and the passive circuit breaker.

Both take outcomes and an injected clock and say whether their routable state changed, so the fleet
pushes into the core only on a change and tests drive them without sleeping.
"""

from __future__ import annotations

import enum
import time
from typing import Callable

Clock = Callable[[], float]


class Liveness:
    """K consecutive failed polls make a backend unhealthy; M consecutive good ones bring it back.

    A single failure only marks the data stale: one lost scrape should not move traffic. A backend
    never polled yet (`healthy=None`) is decided by its first poll: it has no good record to protect.
    """

    def __init__(self, unhealthy_after: int, healthy_after: int, *, healthy: bool | None = True) -> None:
        self.unhealthy_after = max(1, unhealthy_after)
        self.healthy_after = max(1, healthy_after)
        self.known = healthy is not None
        self.healthy = bool(healthy)
        self.stale = False
        self.failures = 0
        self.successes = 0

    def record(self, ok: bool) -> bool:
        """Feed one poll outcome; True when `healthy` flipped."""
        before = self.healthy
        if ok:
            self.stale = False
            self.failures = 0
            self.successes += 1
            if not self.healthy and (self.successes >= self.healthy_after or not self.known):
                self.healthy = True
        else:
            self.stale = True
            self.successes = 0
            self.failures += 1
            if self.healthy and self.failures >= self.unhealthy_after:
                self.healthy = False
        self.known = True
        return self.healthy != before


class CircuitState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ProbeVerdict(str, enum.Enum):
    """What the half-open probe's answer says about the backend; only RECOVERED closes the circuit."""

    RECOVERED = "recovered"  # a 2xx completion: it served the kind of request clients send
    OVERLOADED = "overloaded"  # 429: alive, but refusing work while it gets none from this router
    REJECTED = "rejected"  # any other 4xx: model gone, wrong route, auth: client requests would fail too
    FAILED = "failed"  # no connection, timeout, 5xx, or an answer that is no completion (1xx/3xx)


def probe_verdict(status: int | None) -> ProbeVerdict:
    """Classify the probe's HTTP status (None: no answer at all).

    429 keeps the circuit open: the probe is the only request this router sends the backend while
    the circuit is open, so a backend that refuses even that would refuse the client traffic closing
    would send it. The next cool-down probes again, so it closes as soon as the backend has room.
    """
    if status is None:
        return ProbeVerdict.FAILED
    if 200 <= status < 300:
        return ProbeVerdict.RECOVERED
    if status == 429:
        return ProbeVerdict.OVERLOADED
    if 400 <= status < 500:
        return ProbeVerdict.REJECTED
    return ProbeVerdict.FAILED


class CircuitBreaker:
    """Passive outlier ejection from request outcomes (consecutive failures, like Envoy's consecutive_5xx).

    closed --N consecutive failures--> open --cool-down--> half_open --probe recovered--> closed
                                                            half_open --any other verdict--> open (cool-down again)
    The core gets no client traffic for the backend while the circuit is open or half-open: the
    half-open trial is one small request the control plane sends itself, so no client request is
    spent finding out whether the backend has recovered.
    """

    def __init__(self, failures: int, cooldown: float, clock: Clock = time.monotonic) -> None:
        self.threshold = max(1, failures)
        self.cooldown = cooldown
        self.clock = clock
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trips = 0

    @property
    def is_open(self) -> bool:
        """True while the core must not route client requests to the backend (open or half-open)."""
        return self.state is not CircuitState.CLOSED

    def _open(self) -> None:
        self.state = CircuitState.OPEN
        self.opened_at = self.clock()
        self.trips += 1

    def record(self, ok: bool) -> bool:
        """Feed one outcome (a client request's or the half-open probe's); True when `is_open` flipped."""
        before = self.is_open
        if self.state is CircuitState.HALF_OPEN:
            if ok:
                self.state = CircuitState.CLOSED
                self.failures = 0
            else:
                self._open()
        elif self.state is CircuitState.CLOSED:
            self.failures = 0 if ok else self.failures + 1
            if self.failures >= self.threshold:
                self._open()
        # While open, outcomes of requests that were in flight when it opened change nothing.
        return self.is_open != before

    def tick(self) -> bool:
        """Let time pass: open becomes half_open after the cool-down. True when the state changed."""
        if self.state is CircuitState.OPEN and self.clock() - self.opened_at >= self.cooldown:
            self.state = CircuitState.HALF_OPEN
            return True
        return False


__all__ = ["CircuitBreaker", "CircuitState", "Clock", "Liveness", "ProbeVerdict", "probe_verdict"]
