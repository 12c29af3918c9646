"""A real `kvroute serve`: every run of Python's cyclic collector in it is timed in /metrics
(`kvroute_gc_pause_seconds`, by generation), since the event loop, and every stream, stands still
while one runs."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kvroute.sim import SimFleet
from tests.admin.test_router_wide_metrics import post_chat
from tests.procs import QUICK, serve_process


async def test_collector_runs_are_counted_by_generation() -> None:
    async with SimFleet(instances=1, per_token_delay=0.001, default_max_tokens=4) as sims, \
            serve_process(*QUICK, "--backend", sims.urls[0]) as (_, port, admin):
        for _ in range(20):
            await post_chat(port)
        async with httpx.AsyncClient() as http:
            page = (await http.get(f"http://127.0.0.1:{admin}/metrics")).text
    counts = {s.labels["generation"]: s.value for f in text_string_to_metric_families(page)
              for s in f.samples if s.name == "kvroute_gc_pause_seconds_count"}
    # At least the full collection the gateway runs before it freezes its start-up heap, and the
    # young-generation runs that requests cause.
    assert counts.get("2", 0) >= 1 and counts.get("0", 0) >= 1, counts
