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
import time
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


# A worker killed by a signal it was not sent by us (the OOM killer, a SIGKILL, a crash) is started
# again, up to this many times in RESPAWN_WINDOW_S seconds; more means something kills every new
# one, and the supervisor stops the rest instead of looping.
RESPAWN_LIMIT = 5
RESPAWN_WINDOW_S = 60.0


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Start `workers` processes on one port and pass signals on. A worker that exits with an error
    (a bad flag, a port in use) stops the rest; one killed by a signal is started again."""
    # Bound (not listening) with SO_REUSEPORT: fixes the port, port 0 included, for every worker,
    # and receives no connections itself.
    holder = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((settings.host, settings.port))
    port = holder.getsockname()[1]

    def start(index: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ, **{WORKER_ENV: str(index)})
        return subprocess.Popen([sys.executable, "-m", "kvroute.cli", "serve", *argv, "--port", str(port)], env=env)

    alive = {}
    for index in range(settings.workers):
        child = start(index)
        alive[child.pid] = (index, child)
    log.info("kvroute: %d workers on %s:%d", settings.workers, settings.host, port)
    stopping = False
    respawns: list[float] = []

    def signal_alive(signum: int) -> None:
        # os.kill, not Popen.send_signal: that polls first and may reap a finished worker before
        # os.wait() below sees it, losing its exit code.
        for pid in list(alive):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        signal_alive(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    while alive:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        entry = alive.pop(pid, None)
        if entry is None:
            continue
        index, child = entry
        code = child.returncode = os.waitstatus_to_exitcode(status)
        now = time.monotonic()
        respawns = [t for t in respawns if now - t < RESPAWN_WINDOW_S]
        if code < 0 and not stopping and len(respawns) < RESPAWN_LIMIT:
            # Its clients lost their connections (nothing can save those); the others are untouched.
            log.error("worker %d (index %d) was killed by signal %d; starting it again", pid, index, -code)
            respawns.append(now)
            child = start(index)
            alive[child.pid] = (index, child)
            continue
        worst = max(worst, abs(code))
        if code != 0 and not stopping:
            log.error("worker %d exited with %d; stopping the others", pid, code)
            stopping = True
            signal_alive(signal.SIGTERM)
    holder.close()
    remove_run_files(os.getpid())  # every worker has exited: none writes its files again
    return worst
