"""kvroute (`kvroute serve`, a subprocess) in front of the two real vLLM servers.

"Answered by vLLM" is checked with vLLM's own counters (request_success_total summed over both
servers), not only with the response shape, so a gateway that answered by itself would fail.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

import vllm_fleet
import vllm_workload as workload
from kvroute.control.metrics import parse_metrics
from kvroute_proc import Factory, KvrouteProcess

MODEL = vllm_fleet.SERVED_NAME
BODIES = {
    "completions": {"model": MODEL, "prompt": "The gateway says", "max_tokens": 12, "ignore_eos": True},
    "chat/completions": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello through the gateway"}],
        "max_tokens": 12,
        "ignore_eos": True,
    },
}


def fleet_sum(servers: list[vllm_fleet.VllmServer], name: str, **labels: str) -> float:
    return sum(vllm_fleet.metric_sum(s.metrics_text(), name, **labels) for s in servers)


def served_requests(servers: list[vllm_fleet.VllmServer]) -> float:
    return fleet_sum(servers, "vllm:request_success_total")


@pytest.fixture
def gateway(vllm_pair: list[vllm_fleet.VllmServer], kvroute_factory: Factory) -> KvrouteProcess:
    return kvroute_factory.start([s.url for s in vllm_pair], "cost")


def test_models_lists_served_model(gateway: KvrouteProcess) -> None:
    resp = httpx.get(gateway.url + "/v1/models", timeout=30)
    assert resp.status_code == 200, resp.text
    assert MODEL in [m["id"] for m in resp.json()["data"]]


@pytest.mark.parametrize("endpoint", sorted(BODIES))
def test_not_streamed(gateway: KvrouteProcess, vllm_pair: list[vllm_fleet.VllmServer], endpoint: str) -> None:
    before = served_requests(vllm_pair)
    resp = httpx.post(f"{gateway.url}/v1/{endpoint}", json=BODIES[endpoint], timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == MODEL
    assert body["system_fingerprint"].startswith("vllm-0.32.0")
    assert body["usage"]["completion_tokens"] == 12
    assert body["choices"][0]["finish_reason"] == "length"
    assert served_requests(vllm_pair) - before == 1


@pytest.mark.parametrize("endpoint", sorted(BODIES))
def test_streamed(gateway: KvrouteProcess, vllm_pair: list[vllm_fleet.VllmServer], endpoint: str) -> None:
    before = served_requests(vllm_pair)
    chunks, done = [], False
    with httpx.stream("POST", f"{gateway.url}/v1/{endpoint}", json={**BODIES[endpoint], "stream": True},
                      timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            chunks.append(json.loads(data))
    assert done, "stream ended without data: [DONE]"
    choices = [c["choices"][0] for c in chunks if c.get("choices")]
    texts = [ch.get("text") or ch.get("delta", {}).get("content") or "" for ch in choices]
    assert sum(1 for t in texts if t) >= 2, chunks  # more than one token arrived as its own event
    assert choices[-1]["finish_reason"] == "length"
    assert all(c["model"] == MODEL for c in chunks)
    assert served_requests(vllm_pair) - before == 1


def test_admin_shows_parsed_vllm_metrics(gateway: KvrouteProcess, vllm_pair: list[vllm_fleet.VllmServer]) -> None:
    # Some traffic first, so each server's prefix counters are non-zero; sent straight to each
    # server so both get some, whatever the policy picks.
    prompt = workload.text("admin-check", 200)
    for server in vllm_pair:
        for _ in range(2):
            status, body = vllm_fleet.http_post_json(
                server.url + "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 2}
            )
            assert status == 200, body
    truth = {s.url: parse_metrics(s.metrics_text()) for s in vllm_pair}
    for metrics in truth.values():
        assert metrics.block_size == 128 and metrics.num_gpu_blocks == 16384
        assert metrics.prefix_hit_rate is not None and metrics.prefix_hit_rate > 0

    # The poller runs every 0.5 s; wait (bounded) until the admin API reflects the page read above.
    deadline = time.monotonic() + 30
    while True:
        shown = {b["url"]: b for b in gateway.admin_backends()}
        if all(
            shown.get(url, {}).get("prefix_cache_hit_rate") == pytest.approx(m.prefix_hit_rate)
            for url, m in truth.items()
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert set(shown) == set(truth)
    for url, metrics in truth.items():
        state = shown[url]
        assert state["healthy"] is True
        assert state["models"] == [MODEL]
        assert (state["running"], state["waiting"]) == (0, 0)
        assert state["kv_usage"] == pytest.approx(metrics.kv_usage)
        assert (state["block_size"], state["num_gpu_blocks"]) == (128, 16384)
        assert state["prefix_cache_hit_rate"] == pytest.approx(metrics.prefix_hit_rate)


def test_admin_shows_a_running_request(gateway: KvrouteProcess) -> None:
    """Non-zero gauges read from a live page: while a long answer streams, its backend shows one
    running request and some KV cache in use (the idle page above only proves zeros)."""
    body = {"model": MODEL, "prompt": "Tell a long story", "max_tokens": 8000, "ignore_eos": True, "stream": True}
    seen = None
    with httpx.stream("POST", gateway.url + "/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        # Checked on a clock from the start, not on the arrival of lines: the router polls /metrics
        # every second, so the first poll after the request started is what this catches.
        deadline = time.monotonic() + 30
        while seen is None and time.monotonic() < deadline:
            busy = [b for b in gateway.admin_backends() if b["running"]]
            if busy:
                seen = busy
            else:
                time.sleep(0.1)
    # Leaving the block closed the stream, which aborts the rest of the answer.
    assert seen is not None, "no poll caught the request running"
    assert len(seen) == 1 and seen[0]["running"] == 1
    assert seen[0]["kv_usage"] > 0


def run_sequence(url: str, prompts: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        for prompt in prompts:
            resp = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
            assert resp.status_code == 200, resp.text


def test_prefix_affinity_cost_beats_round_robin(
    vllm_pair: list[vllm_fleet.VllmServer], kvroute_factory: Factory
) -> None:
    backends = [s.url for s in vllm_pair]
    hits = {}
    for policy in ("round_robin", "cost"):
        gateway = kvroute_factory.start(backends, policy)
        # Fresh documents per phase: neither phase can profit from the other's cache.
        prompts = workload.shared_prefix_sequence(f"affinity-{policy}")
        before = fleet_sum(vllm_pair, "vllm:prefix_cache_hits_total")
        run_sequence(gateway.url, prompts)
        hits[policy] = fleet_sum(vllm_pair, "vllm:prefix_cache_hits_total") - before
        gateway.stop()
    print(f"prefix cache hit tokens by policy: {hits}")  # shown with -s, and on failure
    # 3 documents x 4 questions: round robin warms each document on both servers (2 of 4 hit),
    # an affinity policy on one (3 of 4 hit).
    assert hits["round_robin"] > 0
    assert hits["cost"] > hits["round_robin"], hits


def test_client_disconnect_aborts_in_vllm(gateway: KvrouteProcess, vllm_pair: list[vllm_fleet.VllmServer]) -> None:
    # vLLM 0.32 counts no metric for aborts (request_success_total{finished_reason="abort"} stays
    # 0 for a client disconnect), so the proof is: the request stopped running, did not finish
    # by length, and far fewer than its max_tokens were generated.
    max_tokens = 8000
    # Start from an idle fleet, so that no earlier test's request can finish inside this one's window.
    deadline = time.monotonic() + 60
    while fleet_sum(vllm_pair, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.2)
    finished_before = fleet_sum(vllm_pair, "vllm:request_success_total")
    generated_before = fleet_sum(vllm_pair, "vllm:generation_tokens_total")
    body = {"model": MODEL, "prompt": "Keep talking", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    events = 0
    with httpx.stream("POST", gateway.url + "/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events += 1
                if events == 3:
                    break  # leaving the block closes the connection mid-stream
    assert events == 3

    # Bounded wait for vLLM to notice; the proof is in its counters, not in how long it took.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = fleet_sum(vllm_pair, "vllm:num_requests_running")
        if running == 0:
            break
        time.sleep(0.2)
    assert running == 0
    assert fleet_sum(vllm_pair, "vllm:request_success_total") == finished_before, "it ran to completion"
    generated = fleet_sum(vllm_pair, "vllm:generation_tokens_total") - generated_before
    assert 3 <= generated < max_tokens
