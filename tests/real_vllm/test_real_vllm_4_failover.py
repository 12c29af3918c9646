"""Killing one vLLM server mid-run, with streams open on it: every stream ends whole or with an error
event (none hangs), kvroute marks the server unhealthy and every later request still succeeds.

Last in the tier (file order) because it kills a server; the `vllm_pair` fixture would restart it
for any test that ran later.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from kvroute.sse_lines import data_payloads, split_events

import vllm_fleet
from kvroute_proc import Factory

MODEL = vllm_fleet.SERVED_NAME


def served(server: vllm_fleet.VllmServer) -> float:
    return vllm_fleet.metric_sum(server.metrics_text(), "vllm:request_success_total")


STREAMS = 8


def stream_once(url: str, started: threading.Event) -> tuple[str, list[bytes]]:
    """One long completion stream; sets `started` at its first content. Returns the backend and payloads."""
    body = {"model": MODEL, "prompt": "a long story", "max_tokens": 400, "ignore_eos": True, "stream": True}
    raw = b""
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        backend = response.headers["x-kvroute-backend"]
        for piece in response.iter_bytes():
            raw += piece
            started.set()
    events, rest = split_events(raw)
    assert rest == b"", raw[-200:]
    return backend, [p for e in events for p in data_payloads(e)]


def test_killed_backend_marked_unhealthy_requests_succeed(
    vllm_pair: list[vllm_fleet.VllmServer], kvroute_factory: Factory
) -> None:
    survivor, victim = vllm_pair
    gateway = kvroute_factory.start([s.url for s in vllm_pair], "round_robin", "--debug-headers")
    body = {"model": MODEL, "prompt": "failover check", "max_tokens": 4}
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for _ in range(4):
            assert client.post("/v1/completions", json=body).status_code == 200

        # Streams open on both servers when the victim dies.
        started = [threading.Event() for _ in range(STREAMS)]
        with ThreadPoolExecutor(STREAMS) as pool:
            streams = [pool.submit(stream_once, gateway.url, ev) for ev in started]
            assert all(ev.wait(60) for ev in started)
            victim.kill()
            results = [f.result(timeout=180) for f in streams]  # bounded: a hang fails here
        victim_id = victim.url.split("//", 1)[1]
        for backend, payloads in results:
            if backend == victim_id:  # cut mid-stream: an error event, never a [DONE]
                assert payloads[-1] != b"[DONE]" and json.loads(payloads[-1])["error"]["code"], payloads[-3:]
            else:
                assert payloads[-1] == b"[DONE]"
        assert {b for b, _ in results} == {victim_id, survivor.url.split("//", 1)[1]}
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
