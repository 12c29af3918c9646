"""Helpers for the data-plane tests: a router in front of real servers on 127.0.0.1, ports picked at run time.

`ScriptedBackend` is a raw asyncio HTTP server whose answers a test writes byte by byte (to check a
relay is byte-exact, or to misbehave in ways the simulator has no knob for); the simulator
(`kvroute.sim.SimFleet`) is the backend everywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import httptools
from kvroute.config import Settings
from kvroute.gateway import Gateway

METRICS_PAGE = b"vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    """What a script gets: the request, and the raw connection to answer on."""

    request: Seen
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    backend: ScriptedBackend

    async def until_closed(self) -> None:
        """Hold the request open until the router closes the connection."""
        while await self.reader.read(65536):
            pass
        self.backend.gone.set()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def json(self, status: int, payload: bytes, headers: bytes = b"") -> None:
        await self.send(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%b\r\n%b"
                        % (status, len(payload), headers, payload))

    async def sse_head(self) -> None:
        await self.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")

    async def chunk(self, data: bytes) -> None:
        await self.send(b"%x\r\n%b\r\n" % (len(data), data))

    async def end(self) -> None:
        await self.send(b"0\r\n\r\n")


Script = Callable[[Exchange], Awaitable[None]]


async def answer_ok(ex: Exchange) -> None:
    await ex.json(200, b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,'
                       b'"completion_tokens":1,"total_tokens":4}}')


def holding(hold: asyncio.Event) -> Script:
    """Answers at once, except requests whose body mentions "hold": those wait for `hold` first."""

    async def answer(ex: Exchange) -> None:
        if b"hold" in ex.request.body:
            await hold.wait()
        await ex.json(200, b'{"ok":true}')

    return answer


async def trickle(ex: Exchange) -> None:
    """A stream that never ends by itself: one content event every 50 ms until the router hangs up."""
    await ex.sse_head()
    try:
        while True:
            await ex.chunk(b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n')
            await asyncio.sleep(0.05)
    except ConnectionError:
        ex.backend.gone.set()


@dataclass
class ScriptedBackend:
    script: Script = answer_ok
    models: list[str] = field(default_factory=lambda: ["m"])
    seen: list[Seen] = field(default_factory=list)
    open_requests: int = 0
    server: asyncio.AbstractServer | None = None
    port: int = 0
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # a proxied request's client went away
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server context
    models_page: bytes | None = None  # /v1/models answered with these bytes instead of `models`

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> ScriptedBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                if request.method == "GET" and request.path in ("/health", "/metrics", "/v1/models"):
                    body = METRICS_PAGE if request.path == "/metrics" else (
                        json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}).encode()
                        if request.path == "/v1/models" else b"{}")
                    if request.path == "/v1/models" and self.models_page is not None:
                        body = self.models_page
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
                    continue
                self.seen.append(request)
                self.open_requests += 1
                try:
                    await self.script(Exchange(request, reader, writer, self))
                finally:
                    self.open_requests -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self.gone.set()
        except asyncio.CancelledError:
            pass  # torn down with the test; asyncio's stream callback would log a cancelled handler
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Seen(method, path, headers, body)


@contextlib.asynccontextmanager
async def running_gateway(backends: list[str], **overrides: object) -> AsyncIterator[Gateway]:
    """A whole gateway (core, control plane, proxy) on a run-time port, without the admin API."""
    values: dict[str, object] = dict(port=0, admin_port=0, backend=backends, policy="round_robin",
                                     poll_interval=30.0, poll_timeout=2.0, grace_period=2.0)
    values.update(overrides)
    gateway = Gateway(Settings(**values), admin=False)  # type: ignore[arg-type]
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.proxy.port}"


def in_flight(gateway: Gateway) -> int:
    return sum(gateway.router.in_flight(b) for b in gateway.router.backend_ids())


def chat_request(body: bytes, version: bytes = b"1.1") -> bytes:
    """A raw POST of `body` to /v1/chat/completions."""
    return (b"POST /v1/chat/completions HTTP/%b\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b" % (version, len(body), body))


async def raw_post(port: int, body: bytes, version: bytes = b"1.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A chat request on a raw connection, for tests that hang up or read the bytes themselves."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(chat_request(body, version))
    return reader, writer


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes or a complete response is in."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        parser = _ResponseReader()
        while not parser.done:
            data = await reader.read(65536)
            if not data:
                break
            parser.feed(data)
        return parser.raw
    finally:
        writer.close()


class _ResponseReader:
    def __init__(self) -> None:
        self.raw = b""
        self.done = False
        self.parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        self.raw += data
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.done = True


def chat_body(content: str = "hi", *, stream: bool = False, model: str = "m", **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream,
                       **extra}).encode()
