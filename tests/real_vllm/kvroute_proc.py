"""`kvroute serve` as a subprocess on free ports, in front of the real vLLM servers.

A subprocess, not an in-process app: the tier checks the gateway as users run it (its CLI, its
own event loop, its signal handling) and a hung gateway cannot hang the test process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import vllm_fleet

READY_TIMEOUT = 60.0


@dataclass
class KvrouteProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def admin_backends(self) -> list[dict]:
        """GET /admin/backends as a list of backend objects (a bare list or {"backends": [...]})."""
        status, body = vllm_fleet.http_get(self.admin_url + "/admin/backends")
        assert status == 200, (status, body[:300])
        data = json.loads(body)
        return data["backends"] if isinstance(data, dict) else data

    def wait_ready(self, expected_backends: int, timeout: float = READY_TIMEOUT) -> None:
        """Ready = /v1/models answers through the proxy and the admin API lists every backend."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvroute exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, body = vllm_fleet.http_get(self.url + "/v1/models", timeout=2.0)
                if status == 200 and len(self.admin_backends()) >= expected_backends:
                    return
                last = f"{status} {body[:200]!r}"
            except (OSError, AssertionError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.25)
        raise RuntimeError(f"kvroute not ready in time (last: {last}):\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


class Factory:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[KvrouteProcess] = []

    def start(self, backends: list[str], policy: str, *extra: str) -> KvrouteProcess:
        port, admin_port = vllm_fleet.free_port(), vllm_fleet.free_port()
        log_path = self.log_dir / f"kvroute-{len(self.started)}.log"
        cmd = [sys.executable, "-m", "kvroute.cli", "serve",
               "--port", str(port), "--admin-port", str(admin_port), "--policy", policy,
               # Polls every second with the default-sized timeout: tight timeouts failed polls
               # of a busy vLLM on 2 loaded cores and hid its running requests.
               "--poll-interval", "1", "--poll-timeout", "1", *extra]
        for url in backends:
            cmd += ["--backend", url]
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        gateway = KvrouteProcess(proc, port, admin_port, log_path)
        self.started.append(gateway)
        gateway.wait_ready(len(backends))
        return gateway

    def stop_all(self) -> None:
        for gateway in self.started:
            gateway.stop()
