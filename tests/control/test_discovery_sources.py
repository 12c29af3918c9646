"""Discovery sources on their own: each run() must deliver the target sets its input describes.

File: a real file edited on disk. DNS: an injected resolver. Kubernetes: kmock's fake API server over a
real socket, with kubernetes_asyncio as the client.
"""

import asyncio
import contextlib
import os

import pytest

from kvroute.control.discovery import DnsDiscovery, FileDiscovery, KubernetesDiscovery, Target


class Sets:
    """Collects what a source applies; `wait_for` waits (bounded) until a set satisfies a condition."""

    def __init__(self) -> None:
        self.sets: list[dict[str, Target]] = []
        self.changed = asyncio.Event()

    def __call__(self, targets) -> None:
        self.sets.append(dict(targets))
        self.changed.set()

    async def wait_for(self, predicate, timeout: float = 20.0) -> dict[str, Target]:
        async with asyncio.timeout(timeout):
            while True:
                if self.sets and predicate(self.sets[-1]):
                    return self.sets[-1]
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def running(source, sets):
    task = asyncio.create_task(source.run(sets))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_file_discovery_follows_edits_and_survives_bad_files(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text("- http://127.0.0.1:9001\n")
    sets = Sets()
    async with running(FileDiscovery(path, interval=0.02), sets):
        await sets.wait_for(lambda s: set(s) == {"http://127.0.0.1:9001"})
        # Replace the file the way editors and ConfigMap updates do: write aside, rename over.
        tmp = tmp_path / "backends.yaml.new"
        tmp.write_text("backends:\n- http://127.0.0.1:9001\n- {url: http://127.0.0.1:9002, draining: true}\n")
        os.replace(tmp, path)
        got = await sets.wait_for(lambda s: len(s) == 2)
        assert got["http://127.0.0.1:9002"].draining
        count = len(sets.sets)
        path.write_text("backends: {oops\n")  # a broken edit leaves the fleet as it was
        path.write_text("- http://127.0.0.1:9003\n")
        await sets.wait_for(lambda s: set(s) == {"http://127.0.0.1:9003"})
        assert all(len(s) > 0 for s in sets.sets[count:])


async def test_dns_discovery_follows_records():
    records = {"vllm.ns.svc": ["10.0.0.1", "10.0.0.2"]}
    lookups = 0

    async def resolver(name):
        nonlocal lookups
        lookups += 1
        if name not in records:
            raise OSError("NXDOMAIN")
        return list(records[name])

    sets = Sets()
    async with running(DnsDiscovery("vllm.ns.svc", 8000, interval=0.02, resolver=resolver), sets):
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.1:8000", "http://10.0.0.2:8000"})
        records["vllm.ns.svc"] = ["10.0.0.2", "fd00::3"]
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.2:8000", "http://[fd00::3]:8000"})
        # A failed lookup applies nothing: the last good set stands.
        del records["vllm.ns.svc"]
        seen, before = lookups, len(sets.sets)
        async with asyncio.timeout(20):
            while lookups < seen + 3:
                await asyncio.sleep(0.02)
        assert len(sets.sets) == before


@pytest.fixture
async def fake_kubernetes():
    """The fake API server and a client for its EndpointSlices (`fake.slices`)."""
    import aiohttp
    import kmock

    from tests.control.k8s_fake import FakeKubernetes, SliceClient

    async with FakeKubernetes() as fake, kmock.Server(fake) as server, aiohttp.ClientSession() as http:
        fake.base = str(server.url).rstrip("/")
        fake.slices = SliceClient(http, fake.base)
        yield fake


def slice_watcher(fake, selector: str = "kubernetes.io/service-name=vllm") -> KubernetesDiscovery:
    """Discovery of the default namespace's slices matching `selector`, from the fake API server."""
    return KubernetesDiscovery("default", selector, "http", 1, api_server=fake.base)


async def test_kubernetes_discovery_add_update_delete_and_watch_restart(fake_kubernetes):
    from tests.control.k8s_fake import ENDPOINTSLICES, endpoint_slice, ready, terminating

    fake = fake_kubernetes
    api = fake.slices
    await api.create(endpoint_slice("a", [ready("10.0.0.1")]))
    sets = Sets()
    async with running(slice_watcher(fake, "app=vllm"), sets):
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.1:8000"})
        # add
        await api.create(endpoint_slice("b", [ready("10.0.0.2"), terminating("10.0.0.3")]))
        got = await sets.wait_for(lambda s: len(s) == 3)
        assert got["http://10.0.0.3:8000"].draining and not got["http://10.0.0.2:8000"].draining
        # update
        await api.patch("a", {"endpoints": [ready("10.0.0.4")]})
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.4:8000", "http://10.0.0.2:8000",
                                                 "http://10.0.0.3:8000"})
        # delete
        await api.delete("b")
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.4:8000"})
        # Watch restart: while the stream is down, "a" goes away without an event and "c" appears.
        # Resuming the watch cannot tell about "a"; only the relist that 410 forces can.
        lists = fake.lists
        fake.objects[ENDPOINTSLICES, "default", "a"].delete()
        fake.objects[ENDPOINTSLICES, "default", "c"] = endpoint_slice("c", [ready("10.0.0.5")])
        fake.expire_next_watch = True
        fake.drop_watches()
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.5:8000"})
        assert fake.expired == 1 and fake.lists == lists + 1
        # And it keeps watching after the relist.
        await api.create(endpoint_slice("d", [ready("10.0.0.6")]))
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.5:8000", "http://10.0.0.6:8000"})


async def test_kubernetes_discovery_picks_only_the_slices_of_its_service(fake_kubernetes):
    from tests.control.k8s_fake import endpoint_slice, ready

    fake = fake_kubernetes
    api = fake.slices
    await api.create(endpoint_slice("vllm-a", [ready("10.0.0.1")]))
    # Same namespace and app label, another service; and this service's name in another namespace.
    await api.create(endpoint_slice("canary-a", [ready("10.0.1.1")], service="vllm-canary"))
    await api.create(endpoint_slice("vllm-x", [ready("10.0.2.1")], namespace="other"))
    sets = Sets()
    async with running(slice_watcher(fake), sets):
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.1:8000"})
        await api.create(endpoint_slice("canary-b", [ready("10.0.1.2")], service="vllm-canary"))
        await api.patch("canary-a", {"endpoints": [ready("10.0.1.3")]})
        await api.create(endpoint_slice("vllm-b", [ready("10.0.0.2")]))
        # Events arrive in order: once vllm-b is in, the canary changes before it were passed over.
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.1:8000", "http://10.0.0.2:8000"})
        # A slice relabelled away from the service leaves: the watch reports it DELETED.
        await api.patch("vllm-a", {"metadata": {"labels": {"kubernetes.io/service-name": "gone"}}})
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.2:8000"})
    assert set().union(*sets.sets) == {"http://10.0.0.1:8000", "http://10.0.0.2:8000"}


async def test_kubernetes_discovery_resumes_its_watch_without_losing_or_replaying_events(fake_kubernetes):
    from tests.control.k8s_fake import endpoint_slice, ready

    fake = fake_kubernetes
    api = fake.slices
    await api.create(endpoint_slice("a", [ready("10.0.0.1")]))
    sets = Sets()
    source = slice_watcher(fake)
    async with running(source, sets):
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.1:8000"})
        await api.create(endpoint_slice("b", [ready("10.0.0.2")]))
        await sets.wait_for(lambda s: len(s) == 2)
        last_seen = source.resource_version
        assert last_seen == str(fake.version)
        # The stream breaks, and three changes happen while no watch is open.
        fake.watches_open.clear()
        fake.drop_watches()
        await api.create(endpoint_slice("c", [ready("10.0.0.3")]))
        await api.patch("a", {"endpoints": [ready("10.0.0.4")]})
        await api.delete("b")
        applied, lists = len(sets.sets), fake.lists
        fake.watches_open.set()
        await sets.wait_for(lambda s: set(s) == {"http://10.0.0.4:8000", "http://10.0.0.3:8000"})
        resumed = fake.watch_log[-1]
        assert resumed.resource_version == last_seen  # from where the broken watch left off
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed.sent] == [
            ("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]  # nothing lost, nothing replayed
        assert fake.lists == lists  # resumed, not relisted
        assert [set(s) for s in sets.sets[applied:]] == [  # one update per event, in order
            {"http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"},
            {"http://10.0.0.4:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"},
            {"http://10.0.0.4:8000", "http://10.0.0.3:8000"}]
        assert source.resource_version == str(fake.version)
