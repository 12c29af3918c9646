"""Backend discovery: one interface, four sources (static, file, DNS, Kubernetes EndpointSlices).

A source produces the full set of backends it currently sees, as `Target`s keyed by URL, and hands each
set to `Reconciler.apply`. The reconciler is the only place that turns sets into fleet changes: new
URLs are added, targets marked draining are drained, and URLs that vanished are retired (drained at
once, removed by `Fleet.tick` when nothing is in flight on them) so that a reload or a scale-down
never cuts a running request. A source only ever touches the backends it added itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, Protocol

import yaml

from kvroute.control.atomic_file import ChangedFile
from kvroute.control.fleet import Backend, Fleet, backend_id_for
from kvroute.loops import every

if TYPE_CHECKING:
    from kvroute.config import Settings

log = logging.getLogger("kvroute.control.discovery")


@dataclass(frozen=True)
class Target:
    url: str
    draining: bool = False


Targets = Mapping[str, Target]
Apply = Callable[[Targets], None]
Resolver = Callable[[str], Awaitable[list[str]]]


class Discovery(Protocol):
    source: str

    async def run(self, apply: Apply) -> None:
        """Call `apply` with the full target set whenever it changes (at least once); may return if it
        never changes again."""


class DiscoveryError(ValueError):
    """A source's input is malformed; the message names where it came from."""


def _url(host: str, port: int, scheme: str = "http") -> str:
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{scheme}://{host}:{port}"


def _targets(items: Iterable[Target]) -> dict[str, Target]:
    """Merge duplicates: an address that is ready anywhere is not draining."""
    merged: dict[str, Target] = {}
    for target in items:
        url = target.url.rstrip("/")
        seen = merged.get(url)
        merged[url] = Target(url, draining=target.draining and (seen is None or seen.draining))
    return merged


class Reconciler:
    """Applies one source's target sets to the fleet."""

    def __init__(self, fleet: Fleet, source: str, on_added: Callable[[Backend], None] | None = None) -> None:
        self.fleet = fleet
        self.source = source
        self.on_added = on_added

    def apply(self, targets: Targets) -> None:
        wanted = set()
        for target in targets.values():
            existing = self.fleet.get(backend_id_for(target.url))
            if existing is not None and existing.source != self.source and not existing.retiring:
                wanted.add(existing.id)  # someone else's backend (static, admin): leave it alone
                continue
            backend = self.fleet.add(target.url, source=self.source, healthy=None)
            wanted.add(backend.id)
            if backend.discovery_draining != target.draining:
                backend.discovery_draining = target.draining
                self.fleet.push(backend)
            if existing is None:
                log.info("discovered backend %s (%s)", backend.id, self.source)
                if self.on_added is not None:
                    self.on_added(backend)
        for backend in self.fleet.all():
            if backend.source == self.source and backend.id not in wanted and not backend.retiring:
                log.info("backend %s left %s discovery; draining before removal", backend.id, self.source)
                self.fleet.retire(backend.id)


def parse_backend_file(text: str, path: str) -> dict[str, Target]:
    """A YAML or JSON backends file: a list of URLs or of {url, draining}, optionally under `backends:`."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"{path}: not valid YAML/JSON: {exc}") from None
    if isinstance(loaded, dict):
        unknown = set(loaded) - {"backends"}
        if unknown:
            raise DiscoveryError(f"{path}: unknown key {sorted(unknown)[0]!r} (expected 'backends')")
        loaded = loaded.get("backends")
    if loaded is None:
        loaded = []
    if not isinstance(loaded, list):
        raise DiscoveryError(f"{path}: key 'backends' must be a list of URLs or of {{url, draining}} mappings")
    items = []
    for index, entry in enumerate(loaded):
        if isinstance(entry, str):
            items.append(Target(entry))
        elif isinstance(entry, dict) and isinstance(entry.get("url"), str):
            unknown = set(entry) - {"url", "draining"}
            if unknown:
                raise DiscoveryError(f"{path}: backends[{index}]: unknown key {sorted(unknown)[0]!r}")
            draining = entry.get("draining", False)
            if not isinstance(draining, bool):
                raise DiscoveryError(f"{path}: backends[{index}].draining must be true or false")
            items.append(Target(entry["url"], draining=draining))
        else:
            raise DiscoveryError(f"{path}: backends[{index}] must be a URL or a mapping with 'url'")
    for item in items:
        try:
            backend_id_for(item.url)
        except ValueError as exc:
            raise DiscoveryError(f"{path}: {exc}") from None
    return _targets(items)


class FileDiscovery:
    """Re-reads the file when its modification time, size or inode changes (editors often replace the
    file instead of writing it in place). A file that does not parse leaves the fleet as it was."""

    source = "file"

    def __init__(self, path: str | Path, interval: float) -> None:
        self.path = Path(path)
        self.interval = interval
        self._file = ChangedFile(self.path)

    def _read_if_changed(self) -> dict[str, Target] | None:
        was_read = self._file.seen is not None
        try:
            data = self._file.read_if_changed()
        except OSError as exc:
            if was_read:
                log.error("%s: cannot read backends file (%s); keeping the current fleet", self.path, exc)
            return None
        if data is None:
            return None
        try:
            return parse_backend_file(data.decode(errors="replace"), str(self.path))
        except DiscoveryError as exc:
            log.error("%s; keeping the current fleet", exc)
            return None

    async def run(self, apply: Apply) -> None:
        def step() -> None:
            targets = self._read_if_changed()
            if targets is not None:
                apply(targets)

        await every(self.interval, step, log, f"reading backends file {self.path}")


async def resolve_addresses(name: str) -> list[str]:
    """Every A and AAAA record of `name`, through the system resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class DnsDiscovery:
    """Each address of a name (a Kubernetes headless Service) is a backend. A failed lookup keeps the
    current fleet: a DNS hiccup must not empty the router."""

    source = "dns"

    def __init__(self, name: str, port: int, interval: float, resolver: Resolver | None = None,
                 scheme: str = "http") -> None:
        self.name = name
        self.port = port
        self.interval = interval
        self.resolver = resolver or resolve_addresses
        self.scheme = scheme

    async def run(self, apply: Apply) -> None:
        async def step() -> None:
            try:
                addresses = await self.resolver(self.name)
            except OSError as exc:
                log.warning("DNS lookup of %s failed (%s); keeping the current fleet", self.name, exc)
            else:
                apply(_targets(Target(_url(address, self.port, self.scheme)) for address in addresses))

        await every(self.interval, step, log, f"DNS discovery of {self.name}")


def targets_from_slices(slices: Iterable[Mapping[str, Any]], port_name: str, default_port: int) -> dict[str, Target]:
    """EndpointSlices to targets: ready endpoints serve, terminating-but-serving ones drain, the rest
    are left out. A missing `ready` condition means ready (the API's own rule)."""
    items = []
    for slice_ in slices:
        ports = slice_.get("ports") or []
        port = default_port
        if port_name:
            named = [p.get("port") for p in ports if p.get("name") == port_name]
            if not named:
                continue
            port = named[0]
        elif ports and ports[0].get("port"):
            port = ports[0]["port"]
        for endpoint in slice_.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            ready = conditions.get("ready") is not False
            terminating = conditions.get("terminating") is True
            serving = conditions.get("serving", ready) is not False
            if ready and not terminating:
                draining = False
            elif terminating and serving:
                draining = True
            else:
                continue
            for address in endpoint.get("addresses") or []:
                items.append(Target(_url(address, port), draining=draining))
    return _targets(items)


class WatchGone(Exception):
    """The API server no longer has the resourceVersion we resume from (410): relist."""


class KubernetesDiscovery:
    """Lists EndpointSlices, then watches from the list's resourceVersion. A watch that ends (server
    timeout, dropped connection) resumes from the last version seen; 410 Gone relists from scratch."""

    source = "kubernetes"
    RETRY_DELAY = 1.0

    def __init__(self, namespace: str, label_selector: str, port_name: str, default_port: int, *,
                 api_server: str = "", watch_timeout: int = 300) -> None:
        try:
            import kubernetes_asyncio  # noqa: F401  (fail at start-up, not later inside a task)
        except ImportError:
            raise DiscoveryError("discovery 'kubernetes' needs the kubernetes_asyncio package: "
                                 "pip install 'kvroute[kubernetes]'") from None
        self.namespace = namespace
        self.label_selector = label_selector
        self.port_name = port_name
        self.default_port = default_port
        self.api_server = api_server
        self.watch_timeout = watch_timeout
        self.slices: dict[str, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.lists = 0

    async def _api_client(self) -> Any:
        from kubernetes_asyncio import client, config

        if self.api_server:  # e.g. `kubectl proxy`, or a test's fake API server: no credentials
            configuration = client.Configuration()
            configuration.host = self.api_server
            return client.ApiClient(configuration)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            await config.load_kube_config()
        return client.ApiClient()

    def _backoff(self, failures: int) -> float:
        """A dropped stream is resumed at once; an API server that keeps failing is asked less often."""
        return 0.0 if failures <= 1 else min(self.RETRY_DELAY * 2 ** (failures - 2), 30.0)

    def _emit(self, apply: Apply) -> None:
        apply(targets_from_slices(self.slices.values(), self.port_name, self.default_port))

    async def _list(self, api: Any, apply: Apply) -> None:
        response = await api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.label_selector, _preload_content=False)
        try:
            payload = json.loads(await response.read())
        finally:
            response.release()
        self.lists += 1
        self.slices = {item["metadata"]["name"]: item for item in payload.get("items") or []}
        self.resource_version = (payload.get("metadata") or {}).get("resourceVersion") or None
        self._emit(apply)

    def _event(self, event: Mapping[str, Any], apply: Apply) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchGone(obj.get("message", "resource version too old"))
            raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        metadata = obj.get("metadata") or {}
        if metadata.get("resourceVersion"):
            self.resource_version = metadata["resourceVersion"]
        if kind in ("ADDED", "MODIFIED"):
            self.slices[metadata["name"]] = dict(obj)
        elif kind == "DELETED":
            self.slices.pop(str(metadata.get("name")), None)
        else:
            return  # BOOKMARK: only the resourceVersion moves
        self._emit(apply)

    async def _watch(self, api: Any, apply: Apply) -> None:
        import aiohttp

        kwargs: dict[str, Any] = {}
        if self.resource_version:
            kwargs["resource_version"] = self.resource_version
        response = await api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.label_selector, watch=True, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout, _preload_content=False,
            # The server ends the watch after watch_timeout; the read timeout only catches a dead peer.
            _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.watch_timeout + 30),
            **kwargs)
        try:
            if response.status == 410:
                raise WatchGone("watch answered 410")
            if response.status >= 400:
                raise RuntimeError(f"watch answered {response.status}")
            async for line in response.content:
                if line.strip():
                    self._event(json.loads(line), apply)
        finally:
            response.release()

    async def run(self, apply: Apply) -> None:
        import aiohttp
        from kubernetes_asyncio.client import DiscoveryV1Api
        from kubernetes_asyncio.client.exceptions import ApiException

        api_client = await self._api_client()
        try:
            api = DiscoveryV1Api(api_client)
            listed = False
            failures = 0
            while True:
                try:
                    if not listed:
                        await self._list(api, apply)
                        listed = True
                    failures = 0
                    await self._watch(api, apply)
                    log.debug("EndpointSlice watch ended; resuming from %s", self.resource_version)
                except WatchGone as exc:
                    log.info("EndpointSlice watch expired (%s); relisting", exc)
                    listed = False
                except ApiException as exc:
                    if exc.status == 410:
                        listed = False
                        continue
                    failures += 1
                    log.warning("Kubernetes API error %s; retrying", exc.status)
                    await asyncio.sleep(self._backoff(failures))
                except (aiohttp.ClientError, OSError, RuntimeError, ValueError, asyncio.TimeoutError) as exc:
                    # A cut stream is a ClientPayloadError; a garbled line is a ValueError.
                    failures += 1
                    log.warning("EndpointSlice watch failed (%r); retrying", exc)
                    await asyncio.sleep(self._backoff(failures))
        finally:
            await api_client.close()


def from_settings(settings: Settings) -> Discovery | None:
    """The dynamic source chosen by `discovery`; static backends (`backend`) are added in every mode."""
    if settings.discovery == "static":
        return None
    if settings.discovery == "file":
        return FileDiscovery(settings.discovery_file, settings.discovery_interval)
    if settings.discovery == "dns":
        return DnsDiscovery(settings.dns_name, settings.dns_port, settings.discovery_interval)
    if settings.discovery == "kubernetes":
        return KubernetesDiscovery(settings.k8s_namespace, settings.k8s_label_selector, settings.k8s_port_name,
                                   settings.dns_port, api_server=settings.k8s_api_server)
    raise ValueError(f"unknown discovery mode {settings.discovery!r}")


__all__ = [
    "Discovery", "DiscoveryError", "DnsDiscovery", "FileDiscovery", "KubernetesDiscovery", "Reconciler",
    "Target", "WatchGone", "from_settings", "parse_backend_file", "resolve_addresses",
    "targets_from_slices",
]
