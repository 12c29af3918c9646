"""A real `kvroute serve --workers 2`: worker 0's /metrics and admin views count both workers' requests."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kvroute.sim import SimFleet
from tests.control.support import chat
from tests.procs import QUICK, serve_process


async def post_chat(port: int, **extra: object) -> httpx.Response:
    # A new connection each time, so that the kernel spreads the requests over both workers.
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=chat(**extra),
                                   headers={"content-type": "application/json"})
        assert answer.status_code == 200
        return answer


async def scrape(admin: int) -> dict[str, float]:
    """Each sample name summed over its label sets."""
    async with httpx.AsyncClient() as http:
        page = (await http.get(f"http://127.0.0.1:{admin}/metrics")).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def admin_json(admin: int, path: str) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{admin}/admin/{path}")).json()


async def test_worker_zero_reports_the_requests_and_in_flight_counts_of_every_worker():
    async with SimFleet(instances=1, per_token_delay=0.05, default_max_tokens=4) as sims, \
            serve_process(*QUICK, "--backend", sims.urls[0], workers=2) as (process, port, admin):
        requests = 20
        for _ in range(requests):
            await post_chat(port)
        last_seen: dict[str, float] = {}

        async def counted() -> bool:
            last_seen.update(await scrape(admin))
            return last_seen.get("kvroute_requests_total") == requests

        # Worker 1's numbers reach worker 0 within about one poll interval: wait for them, bounded.
        async with asyncio.timeout(30):
            while not await counted():
                await asyncio.sleep(0.1)
        assert last_seen["kvroute_e2e_seconds_count"] == requests
        assert last_seen["kvroute_decisions_total"] == requests
        stats = await admin_json(admin, "stats")
        assert stats["requests_total"] == requests and stats["in_flight"] == 0
        # The sum is not worker 0 alone: worker 1 served some of them (all twenty on one worker is a
        # one-in-a-million event).
        worker_one = Path(tempfile.gettempdir()) / f"kvroute-{process.pid}-worker-1-metrics.json"
        assert 0 < json.loads(worker_one.read_bytes())["totals"]["requests_total"] < requests

        # Slow streams held open on both workers: in flight is counted over the two.
        streams = 8
        slow = [asyncio.create_task(post_chat(port, max_tokens=200, stream=True)) for _ in range(streams)]
        try:
            async def in_flight_everywhere() -> bool:
                backends = (await admin_json(admin, "backends"))["backends"]
                gauge = (await scrape(admin)).get("kvroute_backend_in_flight")
                return (backends[0]["in_flight"] == streams and gauge == streams
                        and (await admin_json(admin, "stats"))["in_flight"] == streams)

            async with asyncio.timeout(30):
                while not await in_flight_everywhere():
                    await asyncio.sleep(0.1)
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
