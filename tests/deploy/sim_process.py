"""A `kvroute sim` server in its own process for a test module (the fixture `sim_url`), on a port it
picks itself, and the clean stop of a child process."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from typing import Iterator

import pytest


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
    finally:
        if process.stdout is not None:
            process.stdout.close()


@contextlib.contextmanager
def running_sim(*args: str) -> Iterator[dict]:
    """`kvroute sim` with these extra arguments; yields the JSON line it prints at start (urls, profile)."""
    process = subprocess.Popen([sys.executable, "-m", "kvroute.cli", "sim", "--instances", "1", "--base-port", "0",
                                "--host", "127.0.0.1", *args], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, "kvroute sim exited before printing its URLs"
        yield json.loads(line)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with running_sim() as started:
        (url,) = started["urls"]
        yield url
