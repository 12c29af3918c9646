"""Discovery sources on their own: each run() must deliver the target sets its input describes.

File: a real file edited on disk. DNS: an injected resolver. Kubernetes: kmock's fake API server over a
real socket, with kubernetes_asyncio as the client.
"""

import asyncio
import contextlib
import os

import pytest

from kvroute.control.discovery import DnsDiscovery, FileDiscovery, Target


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
    import kmock

    from tests.control.k8s_fake import FakeKubernetes

    async with FakeKubernetes() as fake, kmock.Server(fake) as server:
        fake.base = str(server.url).rstrip("/")
        yield fake


async def test_kubernetes_discovery_add_update_delete_and_watch_restart(fake_kubernetes):
    import aiohttp

    from kvroute.control.discovery import KubernetesDiscovery
    from tests.control.k8s_fake import ENDPOINTSLICES, PATH, endpoint_slice, ready, terminating

    fake = fake_kubernetes
    url = fake.base + PATH.format(ns="default")
    async with aiohttp.ClientSession() as http:
        async def call(method, path="", **kwargs):
            async with http.request(method, url + path, **kwargs) as response:
                assert response.status < 300, await response.text()

        await call("POST", json=endpoint_slice("a", [ready("10.0.0.1")]))
        sets = Sets()
        source = KubernetesDiscovery("default", "app=vllm", "http", 1, api_server=fake.base)
        async with running(source, sets):
            await sets.wait_for(lambda s: set(s) == {"http://10.0.0.1:8000"})
            # add
            await call("POST", json=endpoint_slice("b", [ready("10.0.0.2"), terminating("10.0.0.3")]))
            got = await sets.wait_for(lambda s: len(s) == 3)
            assert got["http://10.0.0.3:8000"].draining and not got["http://10.0.0.2:8000"].draining
            # update
            await call("PATCH", "/a", json={"endpoints": [ready("10.0.0.4")]},
                       headers={"Content-Type": "application/merge-patch+json"})
            await sets.wait_for(lambda s: set(s) == {"http://10.0.0.4:8000", "http://10.0.0.2:8000",
                                                     "http://10.0.0.3:8000"})
            # delete
            await call("DELETE", "/b")
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
            await call("POST", json=endpoint_slice("d", [ready("10.0.0.6")]))
            await sets.wait_for(lambda s: set(s) == {"http://10.0.0.5:8000", "http://10.0.0.6:8000"})
