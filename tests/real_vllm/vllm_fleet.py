"""Starting and stopping real vLLM CPU servers for the real_vllm tier and capture_metrics.py.

Plain subprocess and urllib only: it is imported by pytest (the project .venv) and by the
capture script, and it never imports vLLM itself (vLLM lives in its own environment).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import tiny_model
from bench.procs import free_port

ENV_VAR = "KVROUTE_VLLM_ENV"
STAMP_NAME = ".kvroute-env-stamp"  # written last by make_env.sh: its presence means "complete"
SERVED_NAME = tiny_model.SERVED_NAME
# Long enough that a streamed answer lasts many seconds on 2 cores: the disconnect and the running-
# request tests need the answer to outlive vLLM's own reaction time with a wide margin.
MAX_MODEL_LEN = 8192
# Pinned rather than left to vLLM's default (which follows max_model_len): the simulator comparison
# needs the same per-step prefill budget on both sides.
MAX_NUM_BATCHED_TOKENS = 2048
# Two servers start at once on 2 cores; one alone takes ~40 s. Generous, but bounded.
STARTUP_TIMEOUT = 360.0


def vllm_cpus() -> list[int]:
    """The CPUs every vLLM process may run on: all this process may use but the last one, which
    stays free for the test, kvroute and the client.

    Seen on 2 cores (2026-11-27, unpinned): while one server streamed a long answer, its worker held
    one core and its engine core, busy-waiting on the worker's ring buffer, held the other; its own
    API server and every other process got ~15% of a core, and the stream reached the client in one
    burst after 15 s, once the answer had finished. With all of vLLM on one core the same answer
    streamed with no gap over 0.3 s and a 10 ms sleeper elsewhere woke at most 2.8 ms late.
    """
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[:-1] if len(allowed) > 1 else allowed


def env_problem(env_dir: str | None) -> str | None:
    """Why the vLLM environment cannot be used, or None when it can."""
    if not env_dir:
        return f"{ENV_VAR} is not set (run `make test`, or `make vllm-env` and export {ENV_VAR})"
    path = Path(env_dir)
    if not (path / STAMP_NAME).is_file() or not (path / "bin" / "python").exists():
        return f"{ENV_VAR}={env_dir} is not a complete vLLM environment (run `make vllm-env`)"
    return None


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post_json(url: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@dataclass
class VllmServer:
    """One `python -m vllm.entrypoints.openai.api_server` in its own process group."""

    env_dir: Path
    model_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    # A port the KV-event consumer has already bound (see kv_events_endpoint); None: no events.
    kv_events_port: int | None = None
    # A whole --kv-events-config of the caller's (publisher binding its own ports, replay); wins
    # over kv_events_port.
    kv_events_config: dict | None = None
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kv_events_endpoint(self) -> str | None:
        """Where this server publishes its KV events, or None when it does not.

        vLLM's publisher binds only wildcard endpoints ("tcp://*:P", which would listen on every
        interface) and *connects* to any other; so the server is told to connect to 127.0.0.1:P and
        the consumer binds there first (ZMQ reconnects on its own, so the order is free).
        """
        return None if self.kv_events_port is None else f"tcp://127.0.0.1:{self.kv_events_port}"

    def command(self) -> list[str]:
        cmd = [
            str(self.env_dir / "bin" / "python"),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-model-len", str(MAX_MODEL_LEN),
            "--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS),
            "--enable-prefix-caching",
            "--disable-uvicorn-access-log",
        ]
        if self.kv_events_config is not None:
            cmd += ["--kv-events-config", json.dumps(self.kv_events_config)]
        elif self.kv_events_endpoint is not None:
            kv_events = {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": self.kv_events_endpoint,
                "topic": "",
            }
            cmd += ["--kv-events-config", json.dumps(kv_events)]
        return cmd + list(self.extra_args)

    def start(self) -> None:
        """Launches the server; does not wait (call wait_ready) so that two can start at once."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cpus = vllm_cpus()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the tiny model needs little and RAM is shared
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # vLLM binds its OMP threads itself ("auto" would take a core of its own choosing).
            "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus)),
            # A test's python environment must not leak into vLLM's.
            "VIRTUAL_ENV": str(self.env_dir),
            **self.extra_env,
        }
        env.pop("PYTHONPATH", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # vLLM forks an engine-core process; a group of its own lets stop() end both.
                start_new_session=True,
                # The API server and engine core inherit it; the worker's OMP threads follow the
                # VLLM_CPU_OMP_THREADS_BIND above.
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            )
        finally:
            log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            return http_get(self.url + "/health", timeout=2.0)[0] == 200
        except OSError:
            return False

    def wait_ready(self, deadline: float) -> None:
        while True:
            if not self.alive():
                raise RuntimeError(f"vLLM on port {self.port} exited during start-up:\n{self.log_tail()}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM on port {self.port} not healthy in time:\n{self.log_tail()}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the whole group at once: the mid-run failure a test wants to see."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL what is left; safe to call twice."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        # The engine core may outlive the API server; the group still names it.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def metrics_text(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, (status, body[:200])
        return body.decode()


def start_all(servers: list[VllmServer], timeout: float = STARTUP_TIMEOUT) -> None:
    """Start every server at once and wait for all; on any failure stop them all and raise."""
    try:
        for server in servers:
            server.start()
        deadline = time.monotonic() + timeout
        for server in servers:
            server.wait_ready(deadline)
    except BaseException:
        for server in servers:
            server.stop()
        raise


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric in a Prometheus text page: (labels, value) pairs.

    Deliberately tiny and independent of kvroute's parser: the tests use it to read vLLM's own
    counters as ground truth, so it must not share code (or bugs) with what they check.
    """
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, brace, rest = head.partition("{")
        if metric != name:
            continue
        labels: dict[str, str] = {}
        if brace:
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    key, _, val = part.partition("=")
                    labels[key.strip()] = val.strip().strip('"')
        out.append((labels, float(value)))
    return out


def metric_sum(text: str, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in metric_samples(text, name)
        if all(labels.get(k) == v for k, v in match.items())
    )
