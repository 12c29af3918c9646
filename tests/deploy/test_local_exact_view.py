"""deploy/local's exact cache view, run: the simulator with the arguments the overlay gives its pods
and the gateway with the overlay's kvroute.yaml and environment, as processes on 127.0.0.1 (ports
picked at run time in place of the pods' fixed ones, the committed tokenizer directory in place of
its ConfigMap volume). What deploy/local/README.md and docs/deployment.md tell the operator to look
at then says what they promise: `kv_events.confirmed`, `core.kv_events.confirmed_blocks`, and
kvroute_predicted_cached_tokens_total equal to kvroute_reported_cached_tokens_total."""

from __future__ import annotations

import json
import time
import shutil
import urllib.request
from typing import Any, Iterator

import pytest
import yaml

from bench.procs import free_port
from cluster_model import rendered
from deploy_support import DEPLOY, TINY_TOKENIZER, containers, effective_settings, with_tokenizers_at
from sim_process import get, running_gateway, running_sim, wait_for

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")

TOKEN = "test-token"  # running_gateway's admin token


def _local() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in rendered(DEPLOY / "local")}


def _sim_args(pod_args: list[str], events: int, replay: int) -> list[str]:
    """The pod's simulator arguments with this machine's addresses in place of the pod's."""
    local = {"--host": "127.0.0.1", "--base-port": "0", "--kv-events-port": str(events),
             "--kv-events-replay-port": str(replay), "--tokenizer": str(TINY_TOKENIZER)}
    args = list(pod_args[1:])  # after "sim"
    for i, arg in enumerate(args[:-1]):
        if arg in local:
            args[i + 1] = local.pop(arg)
    assert not local, f"the overlay's simulator no longer sets {sorted(local)}"
    return args


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    found = _local()
    (sim,) = containers(found["Deployment", "vllm"])
    (gateway,) = containers(found["Deployment", "kvroute"])
    configmap = next(d for (kind, name), d in found.items() if kind == "ConfigMap" and name.startswith("kvroute-config"))
    settings = effective_settings(configmap, gateway)
    # The file the pod reads, with the pod's environment folded in (env beats YAML) and the tokenizer
    # volume replaced by the committed directory it is generated from.
    config = yaml.safe_load(configmap["data"]["kvroute.yaml"])
    config = with_tokenizers_at({**config, "tokenizer": dict(settings.tokenizer)}, TINY_TOKENIZER)
    events, replay = free_port(), free_port()
    with running_sim(*_sim_args(sim["args"], events, replay)) as started:
        (url,) = started["urls"]
        # One port on every backend host: what the pods' fixed 5557/5558 are, here picked at run time.
        with running_gateway(yaml.safe_dump(config), [url], "--kv-events-port", str(events),
                             "--kv-events-replay-port", str(replay)) as urls:
            yield {"sim": url, **urls}


def _admin(stack: dict[str, Any], path: str) -> Any:
    request = urllib.request.Request(stack["admin"] + path, headers={"authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _backend(stack: dict[str, Any]) -> dict[str, Any]:
    (backend,) = _admin(stack, "/admin/backends")["backends"]
    return backend


def _settled(stack: dict[str, Any]) -> bool:
    """The gateway has applied every batch the simulator published."""
    with urllib.request.urlopen(stack["sim"] + "/sim/state", timeout=10) as response:
        published = json.loads(response.read())["kv_events"]["next_seq"]
    subscription = _backend(stack)["kv_events"]
    return subscription is not None and subscription["last_seq"] == published - 1


def _wait_settled(stack: dict[str, Any]) -> None:
    for _ in range(400):  # bounded wait, not a timing assertion
        if _settled(stack):
            return
        time.sleep(0.05)
    raise AssertionError(f"the gateway never caught up with the simulator's events: {_backend(stack)}")


def _metric(page: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(name + "{"))


def test_the_local_walkthrough_shows_the_exact_view(stack):
    wait_for(stack["base"] + "/ready")
    system = "You are a helpful assistant. Answer briefly and clearly. " * 20
    for i in range(4):
        _wait_settled(stack)  # each decision on a view holding every earlier request's blocks
        body = json.dumps({"model": "sim-model", "max_tokens": 4, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}]}).encode()
        request = urllib.request.Request(stack["base"] + "/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
    _wait_settled(stack)
    backend = _backend(stack)
    assert backend["kv_events"]["confirmed"] is True
    assert backend["core"]["kv_events"]["confirmed"] is True
    assert backend["core"]["kv_events"]["confirmed_blocks"] > 0
    assert backend["core"]["kv_events"]["block_size_mismatch"] == 0
    # The engine reused what the router predicted, token for token (the same tokenizer on both sides).
    status, page = get(stack["admin"] + "/metrics")
    assert status == 200
    predicted = _metric(page.decode(), "kvroute_predicted_cached_tokens_total")
    reported = _metric(page.decode(), "kvroute_reported_cached_tokens_total")
    assert predicted == reported > 0, (predicted, reported)
