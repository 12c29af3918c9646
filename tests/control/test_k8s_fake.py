"""The fake Kubernetes API server itself (tests/control/k8s_fake.py), over a real socket: label
selectors and resourceVersions behave as the discovery tests assume the real API server's do."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.control.k8s_fake import PATH, FakeKubernetes, SliceClient, endpoint_slice, ready
from tests.control.k8s_labels import SelectorError, parse_selector

SERVICE = "kubernetes.io/service-name"


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("", {}, True),
    ("app=vllm", {"app": "vllm"}, True),
    ("app==vllm", {"app": "other"}, False),
    ("app=vllm,tier=gpu", {"app": "vllm"}, False),
    ("app=vllm, tier=gpu", {"app": "vllm", "tier": "gpu"}, True),
    ("tier!=gpu", {}, True),
    (f"{SERVICE}=vllm", {SERVICE: "vllm"}, True),
    (f"{SERVICE}=vllm", {SERVICE: "vllm-canary"}, False),
    ("tier in (gpu, cpu),app", {"tier": "cpu", "app": "x"}, True),
    ("tier notin (gpu,cpu)", {"tier": "cpu"}, False),
    ("!tier", {"tier": "cpu"}, False),
])
def test_label_selectors(selector, labels, expected):
    assert parse_selector(selector)(labels) is expected


def test_a_malformed_selector_is_an_error():
    with pytest.raises(SelectorError):
        parse_selector("app=(vllm")


@pytest.fixture
async def api():
    import kmock

    async with FakeKubernetes() as fake, kmock.Server(fake) as server, aiohttp.ClientSession() as http:
        base = str(server.url).rstrip("/")

        async def watch(count: int, **params: str) -> list[dict]:
            """The first `count` events of a watch with these query parameters."""
            events = []
            async with http.get(base + PATH.format(ns="default"), params={"watch": "true", **params}) as response:
                async for line in response.content:
                    if line.strip():
                        events.append(json.loads(line))
                    if len(events) == count:
                        break
            return events

        yield fake, SliceClient(http, base), watch


async def test_lists_honour_the_label_selector_and_the_namespace(api):
    _, slices, _ = api
    await slices.create(endpoint_slice("vllm-1", [ready("10.0.0.1")]))
    await slices.create(endpoint_slice("vllm-2", [ready("10.0.0.2")], labels={"tier": "gpu"}))
    await slices.create(endpoint_slice("web-1", [ready("10.0.0.3")], service="web"))
    await slices.create(endpoint_slice("vllm-x", [ready("10.0.0.4")], namespace="other"))

    async def names(selector: str) -> set[str]:
        listing = await slices.call("GET", params={"labelSelector": selector})
        return {item["metadata"]["name"] for item in listing["items"]}

    assert await names(f"{SERVICE}=vllm") == {"vllm-1", "vllm-2"}
    assert await names(f"{SERVICE}=vllm,tier=gpu") == {"vllm-2"}
    assert await names(f"{SERVICE}!=vllm") == {"web-1"}
    assert await names("app=vllm") == {"vllm-1", "vllm-2", "web-1"}
    async with slices.http.get(slices.base + PATH.format(ns="default"), params={"labelSelector": "a in (b"}) as answer:
        assert answer.status == 400


async def test_a_watch_resumes_after_its_resource_version_and_forgets_nothing_else(api):
    fake, slices, watch = api
    await slices.create(endpoint_slice("a", [ready("10.0.0.1")]))
    listing = await slices.call("GET", params={"labelSelector": f"{SERVICE}=vllm"})
    version = listing["metadata"]["resourceVersion"]
    assert listing["items"][0]["metadata"]["resourceVersion"] == version
    await slices.create(endpoint_slice("b", [ready("10.0.0.2")]))
    await slices.create(endpoint_slice("web", [ready("10.0.0.9")], service="web"))
    await slices.patch("a", {"endpoints": [ready("10.0.0.3")]})
    await slices.delete("b")
    events = await watch(3, resourceVersion=version, labelSelector=f"{SERVICE}=vllm")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(version)
    # Without a version a watch starts from the current state.
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in await watch(1, labelSelector=f"{SERVICE}=vllm")] \
        == [("ADDED", "a")]
    fake.compact()
    [gone] = await watch(1, resourceVersion=version)
    assert gone["type"] == "ERROR" and gone["object"]["code"] == 410


async def test_a_slice_relabelled_out_of_the_selector_is_deleted_for_the_watch(api):
    _, slices, watch = api
    listing = await slices.call("GET")
    await slices.create(endpoint_slice("a", [ready("10.0.0.1")]))
    await slices.patch("a", {"metadata": {"labels": {SERVICE: "web"}}})
    await slices.patch("a", {"metadata": {"labels": {SERVICE: "vllm"}}})
    events = await watch(3, resourceVersion=listing["metadata"]["resourceVersion"], labelSelector=f"{SERVICE}=vllm")
    assert [e["type"] for e in events] == ["ADDED", "DELETED", "ADDED"]
