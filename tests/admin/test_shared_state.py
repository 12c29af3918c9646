"""Admin API changes reach every worker (kvroute.control.shared_state), over real sockets.

Two gateways in one process sharing one `admin_state_file` stand for worker 0 and worker 1; the last
test runs the real thing, `kvroute serve --workers 2`, as a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path
from typing import AsyncIterator

import httpx

from kvroute.config import Settings
from kvroute.gateway import Gateway
from tests.control.support import FAST, chat, full_gateway
from tests.procs import QUICK, serve_process
from tests.waiting import eventually


def bid(url: str) -> str:
    return url.removeprefix("http://")


@contextlib.asynccontextmanager
async def second_worker(**overrides: object) -> AsyncIterator[Gateway]:
    """A gateway without the admin API, as every worker but worker 0 runs."""
    gateway = Gateway(Settings(**{**FAST, "port": 0, "admin_port": 0, "debug_headers": True, **overrides}),
                      admin=False)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def test_admin_changes_reach_a_worker_without_the_admin_api_and_survive_a_restart(sims, tmp_path):
    state_file = str(tmp_path / "admin-state.json")
    a, b = (bid(url) for url in sims.urls)
    async with full_gateway(backend=sims.urls, admin_state_file=state_file) as first, \
            second_worker(backend=sims.urls, admin_state_file=state_file) as second, httpx.AsyncClient() as http:
        admin = f"http://127.0.0.1:{first.admin.port}/admin"
        fleet = second.fleet
        assert (await http.post(f"{admin}/backends/{a}/drain")).status_code == 200
        await eventually(lambda: fleet.get(a).drained, "the drain reaches the other worker")
        answer = await http.post(f"http://127.0.0.1:{second.proxy.port}/v1/chat/completions", content=chat(),
                                 headers={"content-type": "application/json"})
        assert answer.status_code == 200 and answer.headers["x-kvroute-backend"] == b

        update = {"policy": "least_inflight", "queue_threshold_low": 7}
        assert (await http.put(f"{admin}/policy", json=update)).status_code == 200
        await eventually(lambda: second.router.policy()[0] == "least_inflight", "the policy reaches it")
        assert second.control.operator.limits()["queue_threshold_low"] == 7
        assert dict(second.router.policy()[1]) == dict(first.router.policy()[1])

        assert (await http.post(f"{admin}/backends/{a}/undrain")).status_code == 200
        await eventually(lambda: not fleet.get(a).drained, "the undrain reaches it")
        assert (await http.delete(f"{admin}/backends/{b}")).status_code == 200
        await eventually(lambda: fleet.get(b) is None, "the removal reaches it")
        assert (await http.post(f"{admin}/backends", json={"url": sims.urls[1]})).status_code == 201
        await eventually(lambda: fleet.get(b) is not None and fleet.get(b).routable(), "the re-add reaches it")
        assert fleet.get(b).source == "admin"
        assert (await http.post(f"{admin}/backends/{b}/drain")).status_code == 200
        await eventually(lambda: fleet.get(b).drained, "the second drain reaches it")

    # A restart with the same file starts from the changes: in force before the first request.
    async with full_gateway(backend=sims.urls[:1], admin_state_file=state_file) as restarted:
        assert restarted.router.policy()[0] == "least_inflight"
        assert restarted.control.operator.limits()["queue_threshold_low"] == 7
        assert restarted.fleet.get(b) is not None and restarted.fleet.get(b).drained
        assert not restarted.fleet.get(a).drained


async def test_an_unreadable_state_file_changes_nothing(sims, tmp_path):
    state_file = tmp_path / "admin-state.json"
    async with second_worker(backend=sims.urls, admin_state_file=str(state_file)) as worker:
        state_file.write_text("{not json")
        await worker.control.shared.refresh()
        assert worker.router.policy()[0] == "round_robin"
        assert not any(backend.drained for backend in worker.fleet.all())


async def test_serve_workers_all_follow_a_drain(sims):
    a, b = (bid(url) for url in sims.urls)
    async with serve_process(*QUICK, "--backend", sims.urls[0], "--backend", sims.urls[1],
                             workers=2) as (process, port, admin):
        state_file = Path(tempfile.gettempdir()) / f"kvroute-{process.pid}-admin-state.json"
        async with httpx.AsyncClient() as http:
            drained = await http.post(f"http://127.0.0.1:{admin}/admin/backends/{a}/drain")
            assert drained.status_code == 200

        async def served_by() -> str:
            # A new connection each time, so that the kernel spreads them over both workers.
            async with httpx.AsyncClient() as client:
                answer = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=chat(),
                                           headers={"content-type": "application/json"})
                assert answer.status_code == 200
                return answer.headers["x-kvroute-backend"]

        # Round robin over two backends: a worker that missed the drain sends every other request to
        # `a`. Twenty fresh connections in a row all served by `b` mean both workers took the drain
        # (the chance that the kernel gave all twenty to one worker is one in half a million).
        streak = 0
        async with asyncio.timeout(60):
            while streak < 20:
                streak = streak + 1 if await served_by() == b else 0
        assert state_file.exists()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert not state_file.exists()  # the per-run file goes with the run
