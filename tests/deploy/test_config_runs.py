"""The ConfigMap's kvroute.yaml runs: `kvroute serve --config` loads it unchanged (only the addresses
and discovery are overridden on the command line, as flags beat the file), the probe paths the
manifests use answer on the main port, and a real /metrics scrape declares every family the Grafana
dashboard reads. Real processes on 127.0.0.1 with ports picked at run time; the backend is the
simulator."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Iterator

import pytest

from deploy_support import DASHBOARD, KUBE, dashboard_queries, metric_names, objects, runnable_configmap
from sim_process import get as _get, running_gateway, sim_url, wait_for as _wait_for  # noqa: F401  (sim_url: a fixture)



@pytest.fixture(scope="module")
def gateway(sim_url: str) -> Iterator[dict[str, str]]:
    # The KV event subscription runs and finds no publisher on this simulator (port 5557 of 127.0.0.1);
    # tests/deploy/test_local_exact_view.py runs one.
    with running_gateway(runnable_configmap(), [sim_url]) as urls:
        yield urls


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
