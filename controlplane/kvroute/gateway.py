"""Assembles one router process: the native core, the fleet, the control plane, the proxy, the admin API.

`kvroute serve --workers N` runs N such processes on one port (SO_REUSEPORT; the kernel spreads
connections over them). Each worker is a whole gateway: its own native core (in-flight counts,
tickets, prefix index, wait queue), its own control plane polling the same backends, its own upstream
connection pool. They share only the listening port and the configuration. Worker 0 alone serves the
admin API: it shows worker 0's core; its changes reach every worker (control/shared_state.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from kvroute._native import Router
from kvroute.admin.logs import configure_logging
from kvroute.config import Settings, parse_settings
from kvroute.control.fleet import Fleet
from kvroute.admin.observe import Observer
from kvroute.control.plane import ControlPlane

log = logging.getLogger("kvroute.gateway")

# Set in the environment of each worker process by the supervisor: the worker's index.
WORKER_ENV = "KVROUTE_WORKER_INDEX"


class Gateway:
    """Everything one router process holds; components receive it instead of reaching for globals."""

    def __init__(self, settings: Settings, *, admin: bool = True) -> None:
        self.settings = settings
        self.router = Router(
            settings.policy,
            block_tokens=settings.block_tokens,
            bytes_per_token=settings.bytes_per_token,
            seed=settings.seed,
            wait_queue_size=settings.wait_queue_size,
        )
        if settings.policy_weights:
            self.router.set_policy(settings.policy, **settings.policy_weights)
        self.fleet = Fleet(self.router, settings)
        self.observer = Observer(self.fleet)  # the proxy records outcomes here (kvroute.admin.observe)
        self.control = ControlPlane(self)
        self.proxy: Any = None
        self.admin: Any = None
        self.with_admin = admin

    async def start(self) -> None:
        from kvroute.proxy import server as proxy_server

        await self.control.start()
        self.proxy = await proxy_server.start(self)
        if self.with_admin:
            try:
                from kvroute.admin import server as admin_server
            except ImportError:  # the admin API is optional for the data path
                log.warning("kvroute.admin.server not available; running without the admin API")
            else:
                self.admin = await admin_server.start(self)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.close(self.settings.grace_period)
        if self.admin is not None:
            await self.admin.close()
        await self.control.stop()


async def serve(settings: Settings, started: asyncio.Event | None = None, *, admin: bool = True) -> None:
    """Run until SIGINT/SIGTERM; `started` is set once both ports accept connections."""
    gateway = Gateway(settings, admin=admin)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("kvroute listening on %s:%s (admin %s)", settings.host, gateway.proxy.port,
             f"{settings.admin_host}:{gateway.admin.port}" if gateway.admin is not None else "off")
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def remove_run_files(supervisor_pid: int, directory: Path | None = None) -> None:
    """The per-run files of one `serve --workers N` (kvroute-<supervisor pid>-*: the shared admin state
    and the workers' snapshots). Only the supervisor knows when the last worker has stopped writing."""
    for path in Path(directory or tempfile.gettempdir()).glob(f"kvroute-{supervisor_pid}-*"):
        path.unlink(missing_ok=True)


def _supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Start `workers` processes on one port and pass signals on; the first to fail stops the rest."""
    # Bound (not listening) with SO_REUSEPORT: fixes the port, port 0 included, for every worker,
    # and receives no connections itself.
    holder = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((settings.host, settings.port))
    port = holder.getsockname()[1]
    children = []
    for index in range(settings.workers):
        env = dict(os.environ, **{WORKER_ENV: str(index)})
        children.append(subprocess.Popen([sys.executable, "-m", "kvroute.cli", "serve", *argv, "--port", str(port)],
                                         env=env))
    log.info("kvroute: %d workers on %s:%d", settings.workers, settings.host, port)

    alive = {child.pid: child for child in children}

    def signal_alive(signum: int) -> None:
        # os.kill, not Popen.send_signal: that polls first and may reap a finished worker before
        # os.wait() below sees it, losing its exit code.
        for pid in list(alive):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def forward(signum: int, _frame: object) -> None:
        signal_alive(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    while alive:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        child = alive.pop(pid, None)
        if child is None:
            continue
        code = child.returncode = os.waitstatus_to_exitcode(status)
        worst = max(worst, abs(code))
        if code != 0:  # a worker that failed (a bad flag, a port in use) takes the others down with it
            log.error("worker %d exited with %d; stopping the others", pid, code)
            signal_alive(signal.SIGTERM)
    holder.close()
    remove_run_files(os.getpid())  # every worker has exited: none writes its files again
    return worst


def main(argv: Sequence[str]) -> int:
    import uvloop

    settings = parse_settings(argv)
    configure_logging(settings)  # --log-format text|json, request id on every line
    worker = os.environ.get(WORKER_ENV)
    if settings.workers > 1 and worker is None:
        return _supervise(settings, argv)
    uvloop.run(serve(settings, admin=worker in (None, "0")))
    return 0
