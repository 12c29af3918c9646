"""Helpers for the simulator tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp


async def sse_events(resp: aiohttp.ClientResponse) -> list[Any]:
    """Parse an SSE body into JSON events (and the literal "[DONE]")."""
    raw = (await resp.read()).decode()
    assert raw.endswith("\n\n")
    out: list[Any] = []
    for frame in raw.split("\n\n")[:-1]:
        assert frame.startswith("data: "), frame
        payload = frame[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A minimal Prometheus text parser (names with labels -> value), enough for assertions."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        if "{" in series:
            name, labels = series.split("{", 1)
            pairs = frozenset(tuple(p.split("=", 1)) for p in labels.rstrip("}").split(",") if p)
            pairs = frozenset((k, v.strip('"')) for k, v in pairs)
        else:
            name, pairs = series, frozenset()
        out[(name, pairs)] = float(value)
    return out


def metric(metrics: dict, name: str, **labels: str) -> float:
    total = 0.0
    found = False
    for (n, pairs), v in metrics.items():
        if n == name and all((k, str(val)) in pairs for k, val in labels.items()):
            total += v
            found = True
    assert found, f"{name} {labels} not in metrics"
    return total


async def until(cond: Callable[[], bool], what: str = "condition") -> None:
    """Wait for a state the server reaches asynchronously (bounded; not a timing assertion)."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} never held")
