"""kmock's Kubernetes emulator, serving EndpointSlice lists and watches the way the API server does.

kmock stores the objects and handles create, patch and delete. Its own list and watch ignore what
kvroute's discovery relies on, so this subclass serves those two itself:

- `labelSelector` (tests/control/k8s_labels.py): lists and watches carry only matching slices; a
  slice patched out of the selector arrives as DELETED, one patched into it as ADDED (what the API
  server's watch cache sends).
- resourceVersion: every change kmock makes gets the next version; a list answers the current one;
  a watch from version R sends exactly the changes after R, no replay of the current state, and
  410 Gone once the changes after R were compacted away (`compact()`). A watch without a version
  starts with the current state as ADDED events, like the API server's.
- `timeoutSeconds` ends a watch; `watch=True` (kubernetes_asyncio's spelling) counts like `watch=true`.

Test levers: `drop_watches()` cuts the open watch streams (the client must resume); clearing
`watches_open` holds new watches until it is set again, so changes can be made while no watch is
open; `expire_next_watch` answers the next watch with 410 (the client must relist). Writes straight
into `fake.objects` bypass all of this: they make no event, only a list sees them. `watch_log` has,
per watch, the resourceVersion it asked for and the events it was sent.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import aiohttp.web
import kmock

from tests.control.k8s_labels import SelectorError, parse_selector

ENDPOINTSLICES = "discovery.k8s.io/v1/endpointslices"
PATH = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
_COLLECTION = re.compile(r"^/apis/discovery\.k8s\.io/v1(?:/namespaces/([^/]+))?/endpointslices/?$")

Selector = Callable[[dict], bool]


@dataclass(frozen=True)
class Change:
    version: int
    kind: str  # ADDED, MODIFIED, DELETED
    obj: dict
    before: dict | None  # the slice as the previous change left it: selector transitions need it


@dataclass
class Watch:
    resource_version: str | None
    sent: list[dict] = field(default_factory=list)


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def _key(obj: dict) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") or "", metadata.get("name") or ""


def _stamped(obj: dict, version: int) -> dict:
    return {**obj, "metadata": {**(obj.get("metadata") or {}), "resourceVersion": str(version)}}


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


class _Recorder:
    """Stands in for kmock's event bus of EndpointSlices: each event kmock announces becomes a Change."""

    def __init__(self, fake: FakeKubernetes) -> None:
        self.fake = fake

    async def put(self, *events: dict) -> None:
        for event in events:
            self.fake.record(event["type"], event["object"])


class _Buses(dict):
    """kmock's per-resource buses, with EndpointSlices' going to the recorder instead."""

    def __init__(self, fake: FakeKubernetes, default: dict) -> None:
        super().__init__()
        self.recorder = _Recorder(fake)
        self.default = default

    def __missing__(self, resource: Any) -> Any:
        return self.recorder if resource.plural == "endpointslices" else self.default[resource]


class FakeKubernetes(kmock.KubernetesEmulator):
    expire_next_watch: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock (>=0.8) announces every change on `_buses[resource].put(event)`; that is the one hook
        # it offers for seeing changes in order.
        if not hasattr(self, "_buses"):
            raise RuntimeError("this kmock has no _buses: tests/control/k8s_fake.py needs updating")
        self._buses = _Buses(self, self._buses)
        # Never "0": a watch reads that as "start from the current state", not "after version 0".
        self.version = 1
        self.compacted = 0  # changes up to this version are forgotten: watching from them is 410
        self.changes: list[Change] = []
        self._latest: dict[tuple[str, str], dict] = {}
        self._news = asyncio.Event()
        self.watches_open = asyncio.Event()
        self.watches_open.set()
        self.watch_transports: set = set()
        self.watch_log: list[Watch] = []
        self.lists = 0
        self.watches = 0
        self.expired = 0

    # -- changes ------------------------------------------------------------------------------

    def record(self, kind: str, obj: dict) -> None:
        self.version += 1
        key = _key(obj)
        # A deep copy: kmock patches its stored dicts in place, and `before` must keep this state.
        stamped = _stamped(copy.deepcopy(obj), self.version)
        before = self._latest.pop(key, None)
        if kind != "DELETED":
            self._latest[key] = stamped
        self.changes.append(Change(self.version, kind, stamped, before))
        self._wake_watches()

    def compact(self) -> None:
        """Forget every change so far, as etcd compaction does: watches from before now get 410."""
        self.compacted = self.version
        self.changes.clear()

    def _wake_watches(self) -> None:
        self._news.set()
        self._news = asyncio.Event()

    def drop_watches(self) -> None:
        for transport in list(self.watch_transports):
            transport.close()
        self.watch_transports.clear()
        self._wake_watches()

    # -- serving ------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _COLLECTION.match(raw_request.path)
        if match is None or raw_request.method != "GET":
            return await super().__call__(raw_request)
        query = raw_request.rel_url.query
        try:
            matches = parse_selector(query.get("labelSelector", ""))
        except SelectorError as exc:
            return aiohttp.web.json_response(_status(400, "BadRequest", str(exc)), status=400)
        namespace = match.group(1)

        def selected(obj: dict) -> bool:
            return (namespace is None or _key(obj)[0] == namespace) and matches(_labels(obj))

        if query.get("watch", "").lower() in ("true", "1"):
            return await self._watch(raw_request, selected)
        self.lists += 1
        return aiohttp.web.json_response({
            "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.version)},
            "items": self._current(selected),
        })

    def _current(self, selected: Selector) -> list[dict]:
        items = []
        for (resource, _, _), obj in self.objects.items():
            if resource.plural == "endpointslices" and not obj.deleted and selected(obj.raw):
                # The version of the change that left it so; a slice written into `objects` has none.
                latest = self._latest.get(_key(obj.raw))
                version = int(latest["metadata"]["resourceVersion"]) if latest is not None else 0
                items.append(latest if latest is not None and _stamped(obj.raw, version) == latest else obj.raw)
        return items

    @staticmethod
    def _visible(change: Change, selected: Selector) -> dict | None:
        """The event a watch with this selector sees for a change, if any."""
        now = selected(change.obj)
        was = change.before is not None and selected(change.before)
        if change.kind == "MODIFIED" and now != was:
            kind = "ADDED" if now else "DELETED"
        else:
            kind = change.kind if now else ""
        return {"type": kind, "object": change.obj} if kind else None

    async def _watch(self, raw_request: aiohttp.web.BaseRequest, selected: Selector) -> aiohttp.web.StreamResponse:
        query = raw_request.rel_url.query
        self.watches += 1
        await self.watches_open.wait()
        watch = Watch(query.get("resourceVersion") or None)
        self.watch_log.append(watch)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        transport = raw_request.transport
        if transport is None:
            return response

        async def send(event: dict) -> None:
            watch.sent.append(event)
            await response.write(json.dumps(event).encode() + b"\n")

        self.watch_transports.add(transport)
        try:
            async with asyncio.timeout(float(query.get("timeoutSeconds") or 0) or None):
                if self.expire_next_watch or (watch.resource_version not in (None, "0")
                                              and int(watch.resource_version) < self.compacted):
                    self.expire_next_watch = False
                    self.expired += 1
                    await send({"type": "ERROR", "object": _status(410, "Expired", "too old resource version")})
                    return response
                if watch.resource_version in (None, "0"):
                    since = self.version
                    for obj in self._current(selected):
                        await send({"type": "ADDED", "object": obj})
                else:
                    since = int(watch.resource_version)
                while not transport.is_closing():
                    news = self._news
                    for change in [c for c in self.changes if c.version > since]:
                        since = change.version
                        event = self._visible(change, selected)
                        if event is not None:
                            await send(event)
                    await news.wait()
        except (TimeoutError, ConnectionResetError):
            pass  # timeoutSeconds reached, or the client (or drop_watches) closed the stream
        finally:
            self.watch_transports.discard(transport)
        if not transport.is_closing():
            await response.write_eof()
        return response


class SliceClient:
    """The test's side of the fake: calls on an EndpointSlice collection that fail the test on an error."""

    MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base.rstrip("/")

    async def call(self, method: str, path: str = "", ns: str = "default", **kwargs: Any) -> dict:
        async with self.http.request(method, self.base + PATH.format(ns=ns) + path, **kwargs) as response:
            assert response.status < 300, await response.text()
            return await response.json()

    async def create(self, obj: dict) -> dict:
        return await self.call("POST", ns=obj["metadata"]["namespace"], json=obj)

    async def patch(self, name: str, body: dict, ns: str = "default") -> dict:
        return await self.call("PATCH", "/" + name, ns=ns, json=body, headers=self.MERGE_PATCH)

    async def delete(self, name: str, ns: str = "default") -> dict:
        return await self.call("DELETE", "/" + name, ns=ns)


def endpoint_slice(name: str, endpoints: list[dict], port: int = 8000, namespace: str = "default",
                   service: str = "vllm", labels: dict[str, str] | None = None) -> dict:
    """An EndpointSlice as the EndpointSlice controller writes it for `service` (its name label)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app": "vllm", "kubernetes.io/service-name": service, **(labels or {})}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def ready(address: str) -> dict:
    return {"addresses": [address], "conditions": {"ready": True, "serving": True, "terminating": False}}


def terminating(address: str) -> dict:
    return {"addresses": [address], "conditions": {"ready": False, "serving": True, "terminating": True}}
