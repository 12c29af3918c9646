"""The admin API end to end: a whole gateway (control plane, proxy, admin) in front of simulated vLLM
servers, driven over real sockets."""

from __future__ import annotations

import json

import httpx
import pytest

from kvroute.config import ConfigError, Settings
from kvroute.gateway import Gateway
from tests.admin.shedding import shed_one_low
from tests.control.support import chat, full_gateway
from tests.waiting import eventually

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def admin_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.admin.port}"


def proxy_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.proxy.port}"


def bid(url: str) -> str:
    return url.removeprefix("http://")


async def send(client: httpx.AsyncClient, gateway: Gateway, n: int, **body: object) -> list[str]:
    """n chat completions through the proxy; the backend each one went to."""
    backends = []
    for i in range(n):
        response = await client.post(proxy_url(gateway) + "/v1/chat/completions",
                                     content=chat(text=f"question number {i}", **body),
                                     headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        backends.append(response.headers["x-kvroute-backend"])
    return backends


async def test_wrong_or_missing_token_is_401_and_changes_nothing(sims):
    async with full_gateway(backend=sims.urls[:1], admin_token=TOKEN) as gateway, httpx.AsyncClient() as client:
        base = admin_url(gateway)
        target = bid(sims.urls[0])
        calls = [
            ("GET", "/admin/backends", None), ("POST", "/admin/backends", {"url": sims.urls[1]}),
            ("DELETE", f"/admin/backends/{target}", None), ("POST", f"/admin/backends/{target}/drain", None),
            ("POST", f"/admin/backends/{target}/undrain", None), ("GET", "/admin/policy", None),
            ("PUT", "/admin/policy", {"policy": "random", "queue_threshold_low": 1}), ("GET", "/admin/stats", None),
            ("GET", "/admin/config", None),
        ]
        limits = gateway.control.operator.limits
        before = ([b.id for b in gateway.fleet.all()], gateway.router.policy(), limits()["queue_threshold_low"])
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path, body in calls:
                response = await client.request(method, base + path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"]["type"] == "authentication_error"
        assert ([b.id for b in gateway.fleet.all()], gateway.router.policy(),
                limits()["queue_threshold_low"]) == before
        assert not gateway.fleet.get(target).drained
        assert (await client.get(base + "/admin/backends", headers=AUTH)).status_code == 200
        # The page and Prometheus' scrape need no token; neither carries a secret.
        assert (await client.get(base + "/")).status_code == 200
        assert (await client.get(base + "/metrics")).status_code == 200
        config = (await client.get(base + "/admin/config", headers=AUTH)).json()
        assert config["admin_token"] == "***"


async def test_no_token_refuses_non_loopback():
    gateway = Gateway(Settings(admin_host="0.0.0.0", admin_port=0))
    from kvroute.admin import server

    with pytest.raises(ConfigError, match="admin_token"):
        app = server.create_app(gateway.settings, gateway.router, gateway.fleet, gateway.observer, gateway.control)
        await server.start(gateway.settings, app)


async def test_admin_add_makes_a_backend_receive_traffic(sims):
    async with full_gateway(backend=sims.urls[:1]) as gateway, httpx.AsyncClient(timeout=30) as client:
        assert set(await send(client, gateway, 4)) == {bid(sims.urls[0])}
        response = await client.post(admin_url(gateway) + "/admin/backends", json={"url": sims.urls[1]})
        assert response.status_code == 201, response.text
        state = response.json()
        assert state["healthy"] and state["models"] == ["sim-model"] and state["source"] == "admin"
        assert set(await send(client, gateway, 4)) == {bid(u) for u in sims.urls}
        again = await client.post(admin_url(gateway) + "/admin/backends", json={"url": sims.urls[1]})
        assert again.status_code == 409
        bad = await client.post(admin_url(gateway) + "/admin/backends", json={"url": "ftp://x"})
        assert bad.status_code == 400 and "http(s)" in bad.json()["error"]["message"]
        one = (await client.get(admin_url(gateway) + f"/admin/backends/{bid(sims.urls[1])}")).json()
        assert one["id"] == bid(sims.urls[1]) and one["routable"]
        listed = (await client.get(admin_url(gateway) + "/admin/backends")).json()["backends"]
        assert {b["id"] for b in listed} == {bid(u) for u in sims.urls}
        assert all("learned" in b["core"] for b in listed)  # the core's own view rides along


async def test_remove_backend(sims):
    async with full_gateway(backend=sims.urls) as gateway, httpx.AsyncClient(timeout=30) as client:
        gone = bid(sims.urls[1])
        response = await client.delete(admin_url(gateway) + f"/admin/backends/{gone}")
        assert response.json() == {"id": gone, "removed": True}
        assert gone not in gateway.router.backend_ids()
        assert set(await send(client, gateway, 4)) == {bid(sims.urls[0])}
        missing = await client.delete(admin_url(gateway) + f"/admin/backends/{gone}")
        assert missing.status_code == 404


async def test_drained_backend_finishes_its_stream_and_gets_no_new_ones(sims):
    async with full_gateway(backend=sims.urls) as gateway, httpx.AsyncClient(timeout=60) as client:
        body = chat(text="tell me a long story", stream=True, max_tokens=60, ignore_eos=True)
        async with client.stream("POST", proxy_url(gateway) + "/v1/chat/completions", content=body,
                                 headers={"content-type": "application/json"}) as stream:
            assert stream.status_code == 200
            drained = stream.headers["x-kvroute-backend"]
            lines = stream.aiter_lines()
            first = await anext(lines)
            assert first.startswith("data: ")
            response = await client.post(admin_url(gateway) + f"/admin/backends/{drained}/drain")
            assert response.json()["draining"] and not response.json()["routable"]
            # While the stream runs, new requests all go elsewhere.
            others = await send(client, gateway, 6)
            assert drained not in others
            rest = [line async for line in lines]
        chunks = [json.loads(line[6:]) for line in [first, *rest] if line.startswith("data: {")]
        assert rest[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in rest
        assert sum(1 for c in chunks for choice in c["choices"] if choice["delta"].get("content")) >= 60 - 1
        assert gateway.router.in_flight(drained) == 0
        await client.post(admin_url(gateway) + f"/admin/backends/{drained}/undrain")
        assert drained in await send(client, gateway, 4)


async def test_policy_change_changes_decisions(sims):
    async with full_gateway(backend=sims.urls, policy="cost") as gateway, httpx.AsyncClient(timeout=30) as client:
        base = admin_url(gateway)

        async def branches(n: int) -> set[str]:
            found = set()
            for i in range(n):
                response = await client.post(proxy_url(gateway) + "/v1/chat/completions",
                                             content=chat(text=f"policy probe {i}"),
                                             headers={"content-type": "application/json"})
                found.add(response.headers["x-kvroute-branch"].split(":")[0])
            return found

        assert await branches(3) == {"cost"}
        current = (await client.get(base + "/admin/policy")).json()
        assert current["policy"] == "cost" and "kv_weight" in current["weights"]
        changed = await client.put(base + "/admin/policy", json={"policy": "round_robin", "queue_threshold_low": 5})
        assert changed.status_code == 200, changed.text
        assert changed.json()["policy"] == "round_robin" and changed.json()["queue_threshold_low"] == 5
        assert await branches(3) == {"round_robin"}
        # A bad change is refused whole and leaves everything as it was.
        # 2**64 is one past the core's u64: found by the schema fuzzer as a 500.
        for bad in ({"policy": "no_such_policy", "queue_threshold_low": 9}, {"queue_threshold_high": -1},
                    {"colour": "red"}, {"queue_threshold_low": 1, "queue_threshold_normal": 2**64}):
            response = await client.put(base + "/admin/policy", json=bad)
            assert response.status_code == 400, bad
        after = (await client.get(base + "/admin/policy")).json()
        assert after["policy"] == "round_robin" and after["queue_threshold_low"] == 5
        assert gateway.control.operator.limits()["queue_threshold_high"] == 0
        weights = await client.put(base + "/admin/policy", json={"policy": "cost", "weights": {"kv_weight": 0.9}})
        assert weights.json()["weights"]["kv_weight"] == 0.9
        # One weight at a time: the others stay as they were.
        more = await client.put(base + "/admin/policy", json={"weights": {"queue_weight": 2.0}})
        assert more.json()["weights"]["kv_weight"] == 0.9 and more.json()["weights"]["queue_weight"] == 2.0
        unknown = await client.put(base + "/admin/policy", json={"weights": {"bogus": 1.0}})
        assert unknown.status_code == 400 and "bogus" in unknown.json()["error"]["message"]
        assert gateway.router.policy()[1]["queue_weight"] == 2.0


async def test_500s_trip_the_circuit_and_it_is_probed_back(sims):
    async with full_gateway(backend=sims.urls, retry_attempts=0) as gateway, httpx.AsyncClient(timeout=30) as client:
        sick = bid(sims.urls[0])
        await sims.set_fault(0, "error_rate", 1.0)
        statuses = []
        for i in range(12):
            response = await client.post(proxy_url(gateway) + "/v1/chat/completions", content=chat(text=f"x{i}"),
                                         headers={"content-type": "application/json"})
            statuses.append(response.status_code)
        backend = gateway.fleet.get(sick)
        assert backend.breaker.trips >= 1 and any(status >= 500 for status in statuses)
        state = (await client.get(admin_url(gateway) + "/admin/backends")).json()["backends"]
        assert {b["id"]: b["circuit"] for b in state}[sick] in ("open", "half_open")
        assert sick not in await send(client, gateway, 4)  # the open circuit keeps clients away
        await sims.set_fault(0, "none")
        await eventually(lambda: backend.circuit.value == "closed", "the half-open probe closes it")
        assert sick in await send(client, gateway, 4)


async def test_stats_metrics_and_docs(sims):
    async with full_gateway(backend=sims.urls) as gateway, httpx.AsyncClient(timeout=30) as client:
        base = admin_url(gateway)
        await send(client, gateway, 2)
        gateway.observer.request_done("sim-model", bid(sims.urls[0]), 200, "normal", 0.05, 0.2)
        shed_one_low(gateway.router, "sim-model")
        await sims.set_fault(1, "metrics_fail")
        await eventually(lambda: gateway.fleet.get(bid(sims.urls[1])).stale, "a poll error")
        stats = (await client.get(base + "/admin/stats")).json()
        assert stats["backends"]["total"] == 2 and stats["requests_total"] >= 1
        assert stats["policy"] == "round_robin" and "block_tokens" in stats["core"]
        page = (await client.get(base + "/metrics")).text
        for line in (f'kvroute_backend_healthy{{backend="{bid(sims.urls[0])}"}} 1.0',
                     f'kvroute_backend_circuit_state{{backend="{bid(sims.urls[0])}"}} 0.0',
                     f'kvroute_poll_errors_total{{backend="{bid(sims.urls[1])}",kind="http_status"}}',
                     'kvroute_shed_total{tier="low"} 1.0',
                     'kvroute_decisions_total{branch="round_robin"}',
                     f'kvroute_ttft_seconds_bucket{{backend="{bid(sims.urls[0])}",le="0.05"}} 1.0',
                     'kvroute_requests_total{backend='):
            assert line in page, line
        assert (await client.get(base + "/docs")).status_code == 200
        for method, path, status in (("GET", "/nope", 404), ("PATCH", "/admin/policy", 405)):
            response = await client.request(method, base + path)
            assert response.status_code == status and "message" in response.json()["error"]
        paths = (await client.get(base + "/openapi.json")).json()["paths"]
        assert {"/admin/backends", "/admin/backends/{backend_id}", "/admin/backends/{backend_id}/drain",
                "/admin/backends/{backend_id}/undrain", "/admin/policy", "/admin/stats"} <= set(paths)
