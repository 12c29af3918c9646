"""`kvroute serve --workers N`: N processes on one port, stopped together by one SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import httpx

from kvroute.sim import SimFleet

from tests.procs import serve_process

from .helpers import chat_body


async def test_workers_share_one_port_and_stop_together() -> None:
    async with SimFleet(instances=1, per_token_delay=0.0) as fleet:
        async with serve_process("--backend", fleet.urls[0], workers=2) as (process, port, _):
            for _ in range(20):
                # A new connection each time, so that the kernel spreads them over the workers.
                async with httpx.AsyncClient() as client:
                    response = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                                 content=chat_body(model="sim-model", max_tokens=2),
                                                 headers={"content-type": "application/json"})
                    assert response.status_code == 200
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 30) == 0
