"""One client request as the proxy holds it, and what the relay needs of the connection it came on."""

from __future__ import annotations

from typing import Protocol


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "http11", "reject",
                 "status", "streaming", "backend", "model", "ttft", "priority", "tokens")

    def __init__(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                 keep_alive: bool, http11: bool, reject: int) -> None:
        self.method = method
        path, _, query = url.partition(b"?")
        self.path = path
        self.query = query
        self.headers = headers  # names lower-cased
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11
        self.reject = reject  # a status decided while parsing (413), 0 if none
        self.status = 0  # the status sent to the client, 0 while nothing was sent
        self.streaming = False  # ... and the body is an open chunked stream
        # For the record (admin metrics): where the request went, for which model, its TTFT.
        self.backend = ""
        self.model = ""
        self.ttft: float | None = None
        self.priority = "normal"
        self.tokens = 0  # prompt + output tokens the backends reported (usage), for rate limits

    @property
    def responded(self) -> bool:
        return self.status != 0

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Client(Protocol):
    """The client side of one exchange, as the relay writes to it (proxy/server.ClientConnection)."""

    closed: bool

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


__all__ = ["Client", "Request"]
