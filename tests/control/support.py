"""Helpers for control-plane and admin tests: simulated vLLM servers and a gateway whose control plane runs
against them on 127.0.0.1 (ports picked at run time). Polling is fast so state changes come quickly;
every wait is bounded by a timeout, and nothing asserts on elapsed time."""

from __future__ import annotations

import contextlib
import json
from typing import AsyncIterator

import pytest

from kvroute.config import Settings
from kvroute.gateway import Gateway
from kvroute.sim import SimFleet

FAST = dict(poll_interval=0.2, poll_timeout=0.2, unhealthy_after=2, healthy_after=2,
            breaker_failures=3, breaker_cooldown=0.3, policy="round_robin")


def chat(model: str = "sim-model", text: str = "hello there", **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra}).encode()


@pytest.fixture
async def sims() -> AsyncIterator[SimFleet]:
    async with SimFleet(instances=2, per_token_delay=0.005, default_max_tokens=8) as fleet:
        yield fleet


@contextlib.asynccontextmanager
async def control_only(**overrides: object) -> AsyncIterator[Gateway]:
    """A gateway with only its control plane running: tests drive the core with router.route()."""
    values = dict(FAST, port=0, admin_port=0)
    values.update(overrides)
    gateway = Gateway(Settings(**values))  # type: ignore[arg-type]
    await gateway.control.start()
    try:
        yield gateway
    finally:
        await gateway.control.stop()


@contextlib.asynccontextmanager
async def full_gateway(**overrides: object) -> AsyncIterator[Gateway]:
    """Control plane, proxy and admin API, all on run-time ports."""
    values = dict(FAST, port=0, admin_port=0, debug_headers=True)
    values.update(overrides)
    gateway = Gateway(Settings(**values))  # type: ignore[arg-type]
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()
