"""Discovery sources driving a running gateway's fleet, with simulated vLLM servers as the backends."""

from __future__ import annotations

import os

import httpx

from kvroute.control.discovery import DnsDiscovery
from kvroute.config import Settings
from kvroute.gateway import Gateway
from tests.control.support import FAST, chat, control_only, full_gateway
from tests.waiting import eventually


def bid(url: str) -> str:
    return url.removeprefix("http://")


async def test_file_reload_drains_removed_backends_without_dropping_streams(sims, tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(f"- {sims.urls[0]}\n")
    async with full_gateway(discovery="file", discovery_file=str(path), discovery_interval=0.05) as gateway, \
            httpx.AsyncClient(timeout=60) as client:
        first, second = bid(sims.urls[0]), bid(sims.urls[1])
        assert [b.id for b in gateway.fleet.all()] == [first]
        proxy = f"http://127.0.0.1:{gateway.proxy.port}/v1/chat/completions"
        body = chat(text="a long answer please", stream=True, max_tokens=60, ignore_eos=True)
        async with client.stream("POST", proxy, content=body, headers={"content-type": "application/json"}) as stream:
            assert stream.headers["x-kvroute-backend"] == first
            lines = stream.aiter_lines()
            await anext(lines)
            replacement = tmp_path / "backends.yaml.new"
            replacement.write_text(f"backends:\n  - url: {sims.urls[1]}\n")
            os.replace(replacement, path)
            await eventually(lambda: gateway.fleet.get(second) is not None
                             and gateway.fleet.get(second).routable(), "the new backend serves")
            old = gateway.fleet.get(first)
            assert old is not None and old.retiring and old.draining  # still there: a stream is running
            response = await client.post(proxy, content=chat(), headers={"content-type": "application/json"})
            assert response.headers["x-kvroute-backend"] == second
            rest = [line async for line in lines]
        assert "data: [DONE]" in rest
        await eventually(lambda: gateway.fleet.get(first) is None, "removed once its stream ended")
        assert first not in gateway.router.backend_ids()


async def test_dns_discovery_follows_records(sims):
    port = int(sims.urls[0].rsplit(":", 1)[1])
    records = ["127.0.0.1"]

    async def resolver(name: str) -> list[str]:
        assert name == "vllm.default.svc"
        return list(records)

    # The source is built here rather than from settings, to inject the resolver.
    gateway = Gateway(Settings(**FAST, discovery="dns", dns_name="vllm.default.svc", dns_port=port,
                               discovery_interval=0.05))
    gateway.control.source = DnsDiscovery("vllm.default.svc", port, 0.05, resolver=resolver)
    await gateway.control.start()
    try:
        ids = lambda: {b.id for b in gateway.fleet.all() if not b.retiring}  # noqa: E731
        assert ids() == {f"127.0.0.1:{port}"}
        assert gateway.fleet.get(f"127.0.0.1:{port}").healthy
        records.append("::1")  # a second record: added (nothing listens there, so it stays unhealthy)
        await eventually(lambda: ids() == {f"127.0.0.1:{port}", f"[::1]:{port}"}, "the new record is a backend")
        await eventually(lambda: not gateway.fleet.get(f"[::1]:{port}").healthy, "polled, found dead")
        records.remove("127.0.0.1")
        await eventually(lambda: gateway.fleet.get(f"127.0.0.1:{port}") is None, "the dropped record leaves")
    finally:
        await gateway.control.stop()


async def test_kubernetes_discovery_drives_the_fleet(sims):
    import aiohttp
    import kmock

    from tests.control.k8s_fake import FakeKubernetes, SliceClient, endpoint_slice, ready, terminating

    ports = [int(url.rsplit(":", 1)[1]) for url in sims.urls]
    ids = [bid(url) for url in sims.urls]
    async with FakeKubernetes() as fake, kmock.Server(fake) as server, aiohttp.ClientSession() as http:
        api = str(server.url).rstrip("/")
        slices = SliceClient(http, api)
        await slices.create(endpoint_slice("vllm-a", [ready("127.0.0.1")], port=ports[0], namespace="inference"))
        # Another service's slice in the same namespace, with the same app label: never a backend.
        await slices.create(endpoint_slice("web-a", [ready("127.0.0.3")], port=ports[0], namespace="inference",
                                           service="web"))
        async with control_only(discovery="kubernetes", k8s_namespace="inference",
                                k8s_label_selector="kubernetes.io/service-name=vllm",
                                k8s_port_name="http", k8s_api_server=api, poll_interval=0.5,
                                poll_timeout=0.5) as gateway:
            fleet = gateway.fleet
            await eventually(lambda: fleet.get(ids[0]) is not None and fleet.get(ids[0]).routable(),
                             "the first slice's endpoint serves")
            await slices.create(endpoint_slice("vllm-b", [ready("127.0.0.1")], port=ports[1], namespace="inference"))
            await eventually(lambda: fleet.get(ids[1]) is not None and fleet.get(ids[1]).routable(),
                             "an added slice's endpoint serves")
            await slices.patch("vllm-b", {"endpoints": [terminating("127.0.0.1")]}, ns="inference")
            await eventually(lambda: fleet.get(ids[1]).draining, "a terminating endpoint drains")
            await slices.delete("vllm-a", ns="inference")
            await eventually(lambda: fleet.get(ids[0]) is None, "a deleted slice's endpoint leaves")
            assert fleet.get(ids[1]) is not None and not fleet.get(ids[1]).routable()
            assert {b.id for b in fleet.all()} <= set(ids)
