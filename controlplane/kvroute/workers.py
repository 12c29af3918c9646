"""The processes of `serve --workers N`: the supervisor that starts them, the environment variable
that tells a worker its index, and the per-run files they share (kvroute-<supervisor pid>-*).

A leaf module: the admin side, the shared state and the gateway all name these files through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from kvroute.config import Settings

log = logging.getLogger("kvroute.gateway")

# Set in the environment of each worker process by the supervisor: the worker's index.
WORKER_ENV = "KVROUTE_WORKER_INDEX"


def worker_index(settings: Settings, environ: Mapping[str, str] = os.environ) -> int | None:
    """This process's index among the run's workers; None for a router of one process (or the
    supervisor itself)."""
    if settings.workers <= 1 or WORKER_ENV not in environ:
        return None
    return int(environ[WORKER_ENV])


def run_file(name: str, supervisor_pid: int | None = None, directory: Path | None = None) -> Path:
    """A file of this run of `serve --workers N`, named after the supervisor (a worker's parent)."""
    pid = os.getppid() if supervisor_pid is None else supervisor_pid
    return Path(directory or tempfile.gettempdir()) / f"kvroute-{pid}-{name}"


def remove_run_files(supervisor_pid: int, directory: Path | None = None) -> None:
    """The per-run files of one `serve --workers N` (the shared admin state and the workers'
    snapshots). Only the supervisor knows when the last worker has stopped writing."""
    pattern = run_file("*", supervisor_pid, directory)
    for path in pattern.parent.glob(pattern.name):
        path.unlink(missing_ok=True)


def supervise(settings: Settings, argv: Sequence[str]) -> int:
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
