"""Scenario faults of the bench's simulated fleet: applied from a point's start, cleared after their
time, applied again at the next point; a malformed one is refused."""

from __future__ import annotations

import asyncio

import pytest

from bench.simfleet import Faults, parse_fault
from kvroute.sim import SimFleet

from tests.waiting import eventually


async def test_faults_last_their_time_and_return_at_each_point() -> None:
    async with SimFleet(instances=2, per_token_delay=0.001) as fleet:
        faults = Faults(fleet, ["0:slow:2", "1:metrics_stale"], seconds=0.3, time_scale=1.0)
        for _ in range(2):  # two points: each starts with the faults
            await faults.apply()
            assert fleet.instances[0].engine.slow == 2.0 and fleet.instances[1].stale_metrics is not None
            await eventually(lambda: fleet.instances[0].engine.slow == 1.0
                             and fleet.instances[1].stale_metrics is None, "faults cleared")
        lasting = Faults(fleet, ["0:slow:3"], seconds=0.0, time_scale=1.0)
        await lasting.apply()
        await asyncio.sleep(0.2)
        assert fleet.instances[0].engine.slow == 3.0  # no time given: the fault lasts


def test_a_malformed_fault_is_refused() -> None:
    assert parse_fault("2:error_rate:0.5") == (2, "error_rate", 0.5)
    for bad in ("slow", "x:slow", "0:slow:2:3"):
        with pytest.raises(ValueError, match="INSTANCE:MODE"):
            parse_fault(bad)
