"""`kvroute sim` and `kvroute serve` in their own processes on ports picked at run time: the fixture
`sim_url`, `running_sim` and `running_gateway` (a gateway run with a given kvroute.yaml, as the
Deployment runs it but on loopback with static discovery), and the clean stop of a child process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from bench.procs import free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(url: str, status: int = 200, attempts: int = 120) -> None:
    """Bounded wait for a server to come up; not a timing assertion."""
    for _ in range(attempts):
        try:
            if get(url)[0] == status:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} never answered {status}")


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


def kv_event_args(started: dict) -> list[str]:
    """`kvroute serve` flags naming each simulated server's KV event publisher and replay endpoint, from
    the line `kvroute sim --kv-events-port 0` printed (its instances publish on ports of their own,
    which one kv_events_port cannot name)."""
    args = []
    for url, endpoints in started["kv_events"].items():
        args += ["--kv-events-endpoints", f"{url}={endpoints['endpoint']}",
                 "--kv-events-replay-endpoints", f"{url}={endpoints['replay_endpoint']}"]
    return args


@contextlib.contextmanager
def running_gateway(config: str, backends: list[str], *args: str) -> Iterator[dict[str, str]]:
    """`kvroute serve --config` with this kvroute.yaml in front of `backends`; yields base and admin URLs.
    Exiting asserts a clean exit on SIGTERM, the Kubernetes stop signal."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kvroute.yaml"
        path.write_text(config)
        port, admin_port = free_port(), free_port()
        env = dict(os.environ, KVROUTE_ADMIN_TOKEN="test-token")
        command = [sys.executable, "-m", "kvroute.cli", "serve", "--config", str(path), "--host", "127.0.0.1",
                   "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin_port),
                   "--discovery", "static", *args]
        for backend in backends:
            command += ["--backend", backend]
        process = subprocess.Popen(command, env=env)
        base, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
        try:
            wait_for(base + "/health")
            wait_for(admin + "/metrics")
            yield {"base": base, "admin": admin}
        finally:
            code = stop(process)
            assert code == 0, f"kvroute serve exited {code} on SIGTERM"
