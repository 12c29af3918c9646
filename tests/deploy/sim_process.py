"""A `kvroute sim` server in its own process for a test module (the fixture `sim_url`), on a port it
picks itself, and the clean stop of a child process."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    process = subprocess.Popen([sys.executable, "-m", "kvroute.cli", "sim", "--instances", "1", "--base-port", "0",
                                "--host", "127.0.0.1"], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, "kvroute sim exited before printing its URLs"
        (url,) = json.loads(line)["urls"]
        yield url
    finally:
        stop(process)
