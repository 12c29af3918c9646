"""The suite's child processes: `kvroute serve` and `kvroute sim`, started on run-time ports.

Leaving either block stops what still runs with SIGTERM (for serve, the supervisor passes it on to
every worker, so none is left behind) and waits for it; a test that killed the process itself is
left as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from typing import Any, AsyncIterator

# Polls every 0.2 s, round robin, the debug headers: for tests that watch a change reach every worker.
QUICK = ("--poll-interval", "0.2", "--poll-timeout", "0.2", "--policy", "round_robin", "--debug-headers")
_LISTENING = re.compile(r"kvroute listening on [^ ]+:(\d+) \(admin (?:[^ ]+:(\d+)|off)\)")


@contextlib.asynccontextmanager
async def serve_process(*args: str, workers: int = 1) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, int]]:
    """`kvroute serve ARGS` in a child process; yields it, its proxy port and worker 0's admin port
    once every worker listens. Polls every 30 s unless ARGS say otherwise (later flags win)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "serve", "--workers", str(workers), "--port", "0", "--admin-port", "0",
        "--poll-interval", "30", "--log-level", "info", *args, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        ports: list[int] = []
        admin = 0
        while len(ports) < workers:  # every worker says where it listens; worker 0 also its admin port
            line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
            assert line, "the router exited before listening"
            if found := _LISTENING.search(line):
                ports.append(int(found.group(1)))
                admin = int(found.group(2) or admin)
        assert len(set(ports)) == 1, ports  # one port, shared by the workers
        # Keep reading the log, or a full pipe would stall the workers.
        drain = asyncio.create_task(_discard(process.stderr))
        yield process, ports[0], admin
    finally:
        await _stop(process)
        if drain is not None:
            drain.cancel()


@contextlib.asynccontextmanager
async def sim_process(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, Any]]]:
    """`kvroute sim ARGS` in a child process; yields it and its start-up line (urls, profile, ...).
    A simulator still running at the end must exit cleanly on SIGTERM."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "kvroute.cli", "sim", *args,
                                                   stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:
        info = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        yield process, info
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 30) == 0, "the simulator did not exit cleanly on SIGTERM"
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
