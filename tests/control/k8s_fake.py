"""kmock's Kubernetes emulator, with the two things these tests need that it lacks.

- kubernetes_asyncio sends `watch=True`; kmock only recognises `watch=true` (the real API server
  accepts both), so the query is normalised before kmock sees it.
- Watch restarts: `drop_watches()` cuts every open watch stream (the client must resume), and
  `expire_next_watch` answers the next watch with a `410 Gone` ERROR event (the client must relist).
"""

from __future__ import annotations

import json

import aiohttp.web
import kmock

ENDPOINTSLICES = "discovery.k8s.io/v1/endpointslices"
PATH = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


class FakeKubernetes(kmock.KubernetesEmulator):
    expire_next_watch: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.watch_transports: set = set()
        self.lists = 0
        self.watches = 0
        self.expired = 0

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        query = raw_request.rel_url.query
        watch = query.get("watch", "").lower() in ("true", "1")
        if watch:
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.update_query(watch="true"))
            self.watches += 1
            if self.expire_next_watch:
                self.expire_next_watch = False
                self.expired += 1
                return await self._gone(raw_request)
            if raw_request.transport is not None:
                self.watch_transports.add(raw_request.transport)
        elif raw_request.method == "GET" and raw_request.path.endswith("/endpointslices"):
            self.lists += 1
        return await super().__call__(raw_request)

    async def _gone(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                  "message": "too old resource version"}
        await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
        await response.write_eof()
        return response

    def drop_watches(self) -> None:
        for transport in list(self.watch_transports):
            transport.close()
        self.watch_transports.clear()


def endpoint_slice(name: str, endpoints: list[dict], port: int = 8000, namespace: str = "default") -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "vllm"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def ready(address: str) -> dict:
    return {"addresses": [address], "conditions": {"ready": True, "serving": True, "terminating": False}}


def terminating(address: str) -> dict:
    return {"addresses": [address], "conditions": {"ready": False, "serving": True, "terminating": True}}
