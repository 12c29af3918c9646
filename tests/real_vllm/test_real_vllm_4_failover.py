"""Killing one vLLM server mid-run: kvroute marks it unhealthy and every request still succeeds.

Last in the tier (file order) because it kills a server; the `vllm_pair` fixture would restart it
for any test that ran later.
"""

from __future__ import annotations

import time

import httpx

import vllm_fleet
from kvroute_proc import Factory

MODEL = vllm_fleet.SERVED_NAME


def served(server: vllm_fleet.VllmServer) -> float:
    return vllm_fleet.metric_sum(server.metrics_text(), "vllm:request_success_total")


def test_killed_backend_marked_unhealthy_requests_succeed(
    vllm_pair: list[vllm_fleet.VllmServer], kvroute_factory: Factory
) -> None:
    survivor, victim = vllm_pair
    gateway = kvroute_factory.start([s.url for s in vllm_pair], "round_robin")
    body = {"model": MODEL, "prompt": "failover check", "max_tokens": 4}
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for _ in range(4):
            assert client.post("/v1/completions", json=body).status_code == 200

        victim.kill()
        # Right after the kill kvroute still believes in the victim: its failed attempts must be
        # retried on the survivor, so no client sees an error.
        statuses = [client.post("/v1/completions", json=body).status_code for _ in range(10)]
        assert statuses == [200] * 10

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = {b["url"]: b for b in gateway.admin_backends()}
            if state[victim.url]["healthy"] is False:
                break
            time.sleep(0.25)
        assert state[victim.url]["healthy"] is False, state[victim.url]
        assert state[survivor.url]["healthy"] is True

        before = served(survivor)
        statuses = [client.post("/v1/completions", json=body).status_code for _ in range(10)]
        assert statuses == [200] * 10
        assert served(survivor) - before == 10
