"""RateLimiter.admit + charge through the Python API: the two extra crossings a request makes when
rate limits are set. Run with `make bench-micro`; nothing is asserted about time."""

from __future__ import annotations

import itertools

import kvroute


def test_admit_charge_one_key(benchmark) -> None:
    limiter = kvroute.RateLimiter(requests_per_s=1e9, tokens_per_min=1e12)
    clock = itertools.count()

    def once() -> None:
        now = next(clock) * 1e-6
        limiter.admit("sk-client-key-0123456789", 2048, now)
        limiter.charge("sk-client-key-0123456789", 100, now)

    benchmark(once)


def test_admit_charge_among_65536_keys(benchmark) -> None:
    limiter = kvroute.RateLimiter(requests_per_s=1e9, tokens_per_min=1e12)
    keys = [f"sk-{n:020d}" for n in range(65536)]
    for key in keys:
        limiter.admit(key, 1, 0.0)
    cycle = itertools.cycle(keys)
    clock = itertools.count()

    def once() -> None:
        key, now = next(cycle), next(clock) * 1e-6
        limiter.admit(key, 2048, now)
        limiter.charge(key, 100, now)

    benchmark(once)
    benchmark.extra_info["tracked_keys"] = limiter.tracked_keys()
