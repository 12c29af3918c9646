"""Liveness and circuit-breaker state machines, driven by a fake clock (no sleeping)."""

from kvroute.control.health import CircuitBreaker, CircuitState, Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_liveness_k_failures_then_m_successes():
    live = Liveness(unhealthy_after=3, healthy_after=2)
    assert live.healthy and not live.stale
    assert not live.record(False) and live.stale and live.healthy
    assert not live.record(False)
    assert live.record(False) and not live.healthy
    assert not live.record(True) and not live.healthy and not live.stale
    assert live.record(True) and live.healthy


def test_liveness_failure_streak_is_broken_by_success():
    live = Liveness(3, 2)
    for ok in (False, False, True, False, False):
        live.record(ok)
    assert live.healthy


def test_new_backend_is_decided_by_its_first_poll():
    up = Liveness(3, 2, healthy=None)
    assert not up.healthy
    assert up.record(True) and up.healthy
    down = Liveness(3, 2, healthy=None)
    assert not down.record(False) and not down.healthy
    down.record(True)
    assert not down.healthy  # once known bad, it earns its way back like any other


def test_breaker_cycle():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=10.0, clock=clock)
    assert not breaker.record(False) and not breaker.record(False)
    assert breaker.record(False) and breaker.state is CircuitState.OPEN and breaker.is_open
    assert not breaker.record(True)  # late outcomes of requests already in flight change nothing
    assert breaker.state is CircuitState.OPEN
    clock.now += 9.0
    assert not breaker.tick() and breaker.state is CircuitState.OPEN
    clock.now += 1.0
    assert breaker.tick() and breaker.state is CircuitState.HALF_OPEN
    assert breaker.is_open  # no client traffic until the probe says so
    assert not breaker.record(False) and breaker.state is CircuitState.OPEN  # probe failed: cool down again
    assert not breaker.tick()
    clock.now += 10.0
    assert breaker.tick()
    assert breaker.record(True) and breaker.state is CircuitState.CLOSED and not breaker.is_open
    assert breaker.trips == 2


def test_breaker_counts_consecutive_failures_only():
    breaker = CircuitBreaker(failures=2, cooldown=1.0, clock=Clock())
    for ok in (False, True, False, True, False):
        breaker.record(ok)
    assert breaker.state is CircuitState.CLOSED
