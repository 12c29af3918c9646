"""`kvroute serve --workers 2` as a child process, for tests of what reaches (or comes from) every worker."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from typing import AsyncIterator


@contextlib.asynccontextmanager
async def serve_workers(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, int]]:
    """`kvroute serve --workers 2` as a child process: it, its proxy port and worker 0's admin port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "serve", "--workers", "2", "--port", "0", "--admin-port", "0",
        "--poll-interval", "0.2", "--poll-timeout", "0.2", "--policy", "round_robin", "--debug-headers",
        *args, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        ports, admin = set(), 0
        while len(ports) < 2 or not admin:  # every worker says where it listens; worker 0 its admin port
            line = (await process.stderr.readline()).decode()
            assert line, "the router exited before listening"
            if found := re.search(r"kvroute listening on [^ ]+:(\d+) \(admin (?:[^ ]+:(\d+)|off)\)", line):
                ports.add(found.group(0))
                admin = int(found.group(2) or admin)
                port = int(found.group(1))
        # Keep reading the log, or a full pipe would stall the workers.
        drain = asyncio.create_task(_discard(process.stderr))
        yield process, port, admin
    finally:
        if drain is not None:
            drain.cancel()
        if process.returncode is None:
            # SIGTERM, which the supervisor passes on: SIGKILL would leave the workers running, and
            # asyncio's wait() would then wait for them too, since they hold its stderr pipe.
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
