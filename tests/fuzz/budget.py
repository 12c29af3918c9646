"""How hard the Python fuzzers search: a bounded slice in `make test`, many more under `make fuzz`
(KVROUTE_FUZZ=long). Settings per test, not a global profile, so other test areas are unaffected."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("KVROUTE_FUZZ") == "long"


def budget(examples: int) -> settings:
    """`examples` in make test, a hundred times as many under make fuzz. No deadline: the machine is
    shared, and a slow example is not a failure."""
    return settings(
        max_examples=examples * 100 if LONG else examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
