"""The fleet registry: which backends exist, where they are, what they serve.

The native core knows backends only by id; this registry maps ids to URLs for the proxy and is the
one place the control plane changes the fleet, so the core and the registry never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

from kvroute._native import Router


def backend_id_for(url: str) -> str:
    """host:port of a base URL: short, stable, and safe in an admin API path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"backend URL must be http(s)://host[:port], got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


@dataclass
class Backend:
    id: str
    url: str
    source: str = "static"
    models: list[str] = field(default_factory=list)


class Fleet:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._backends: dict[str, Backend] = {}

    def add(self, url: str, *, source: str = "static", models: Iterable[str] = ()) -> Backend:
        url = url.rstrip("/")
        backend = Backend(id=backend_id_for(url), url=url, source=source, models=list(models))
        self._backends[backend.id] = backend
        self.router.upsert_backend(backend.id, models=backend.models, healthy=True, draining=False)
        return backend

    def remove(self, backend_id: str) -> None:
        if self._backends.pop(backend_id, None) is not None:
            self.router.remove_backend(backend_id)

    def get(self, backend_id: str) -> Backend | None:
        return self._backends.get(backend_id)

    def url(self, backend_id: str) -> str:
        return self._backends[backend_id].url

    def all(self) -> list[Backend]:
        return list(self._backends.values())

    def report(self, backend_id: str, ok: bool, failure: str | None = None) -> None:
        """Outcome of one upstream attempt, for passive health (circuit breaking).

        failure is one of "connect", "reset", "timeout", "http_5xx" when ok is False.
        """
