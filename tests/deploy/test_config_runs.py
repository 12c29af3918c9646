"""The ConfigMap's kvroute.yaml runs: `kvroute serve --config` loads it unchanged (only the addresses
and discovery are overridden on the command line, as flags beat the file), the probe paths the
manifests use answer on the main port, and a real /metrics scrape declares every family the Grafana
dashboard reads. Real processes on 127.0.0.1 with ports picked at run time; the backend is the
simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from deploy_support import DASHBOARD, KUBE, dashboard_queries, metric_names, objects
from sim_process import sim_url, stop as _stop  # noqa: F401  (sim_url is a fixture)

from bench.procs import free_port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(url: str, status: int = 200, attempts: int = 120) -> None:
    """Bounded wait for a server to come up; not a timing assertion."""
    for _ in range(attempts):
        try:
            if _get(url)[0] == status:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} never answered {status}")


@pytest.fixture(scope="module")
def gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    config = tmp_path_factory.mktemp("config") / "kvroute.yaml"
    config.write_text(objects(KUBE)["ConfigMap", "kvroute-config"]["data"]["kvroute.yaml"])
    port, admin_port = free_port(), free_port()
    env = dict(os.environ, KVROUTE_ADMIN_TOKEN="test-token")
    # As the Deployment runs it, but reachable here: loopback addresses, static discovery of the sim.
    process = subprocess.Popen([sys.executable, "-m", "kvroute.cli", "serve", "--config", str(config),
                                "--host", "127.0.0.1", "--port", str(port),
                                "--admin-host", "127.0.0.1", "--admin-port", str(admin_port),
                                "--discovery", "static", "--backend", sim_url], env=env)
    base, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    try:
        _wait_for(base + "/health")
        _wait_for(admin + "/metrics")
        yield {"base": base, "admin": admin}
    finally:
        code = _stop(process)
        # SIGTERM is the Kubernetes stop signal: the gateway must drain and exit cleanly on it.
        assert code == 0, f"kvroute serve exited {code} on SIGTERM"


def _probe_paths() -> set[str]:
    (container,) = objects(KUBE)["Deployment", "kvroute"]["spec"]["template"]["spec"]["containers"]
    return {container[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}


def test_probe_paths_answer_on_the_main_port(gateway):
    paths = _probe_paths()
    assert paths == {"/health", "/ready"}
    # /ready turns 200 once the control plane counts the simulator healthy.
    for path in sorted(paths):
        _wait_for(gateway["base"] + path)


def test_scrape_declares_every_dashboard_family(gateway):
    body = json.dumps({"model": "sim-model", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hello from the deploy tests"}]}).encode()
    request = urllib.request.Request(gateway["base"] + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    _wait_for(gateway["base"] + "/ready")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"chat completion through the gateway: {exc.code} {exc.read()!r}") from None
    status, page = _get(gateway["admin"] + "/metrics")
    assert status == 200
    declared = {}
    for line in page.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            declared[name] = kind
    # The text format names a counter's TYPE line after its _total series already.
    suffix = {"histogram": ("_bucket", "_sum", "_count")}
    scraped = {name + s for name, kind in declared.items() for s in suffix.get(kind, ("",))}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set().union(*(metric_names(e) for e in dashboard_queries(dashboard)))
    assert queried <= scraped, f"a real scrape lacks {sorted(queried - scraped)}"
