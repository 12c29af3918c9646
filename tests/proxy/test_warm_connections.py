"""Warm upstream connections: the first requests of a burst are written at once, not after a connect."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import httpx
import pytest

from tests.waiting import eventually

from .helpers import METRICS_PAGE, base, chat_body, running_gateway

JSON = {"content-type": "application/json"}

ANSWER = b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'


class CountingBackend:
    """Records every connection it accepts and the POSTs each one carried; answers health and
    model checks like a vLLM server, and chats with a fixed JSON answer."""

    def __init__(self) -> None:
        self.connections: list[list[str]] = []  # per accepted connection: "METHOD path" of each request
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> CountingBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    def idle(self) -> int:
        """Open connections that have carried no request yet."""
        return sum(1 for posts, w in zip(self.connections, self.writers) if not posts and not w.is_closing())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        posts: list[str] = []
        self.connections.append(posts)
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b" ", 2)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                posts.append(f"{method.decode()} {path.decode()}")
                if method == b"POST":
                    body = ANSWER
                elif path == b"/metrics":
                    body = METRICS_PAGE
                else:
                    body = b'{"object":"list","data":[{"id":"m","object":"model"}]}' if path == b"/v1/models" else b"{}"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                             % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def warm_backend() -> AsyncIterator[CountingBackend]:
    """A started CountingBackend; each test waits for its two warm connections itself."""
    backend = await CountingBackend().start()
    yield backend
    await backend.stop()


async def test_requests_go_out_on_connections_opened_before_they_came(warm_backend: CountingBackend) -> None:
    backend = warm_backend
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        await eventually(lambda: backend.idle() >= 2, "two idle connections opened before any request")
        opened = len(backend.connections)
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
        assert response.status_code == 200
        carried = [posts for posts in backend.connections if "POST /v1/chat/completions" in posts]
        assert len(carried) == 1 and carried[0] == ["POST /v1/chat/completions"]
        # It went out on one of the connections already open: nothing new was accepted for it.
        assert backend.connections.index(carried[0]) < opened


async def test_connections_the_backend_closed_while_idle_are_opened_again(warm_backend: CountingBackend) -> None:
    backend = warm_backend
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        await eventually(lambda: backend.idle() >= 2, "two idle connections")
        before = len(backend.connections)
        for writer in backend.writers:  # what a backend's keep-alive timeout does
            writer.close()
        await eventually(lambda: len(backend.connections) >= before + 2 and backend.idle() >= 2,
                         "the closed connections replaced", timeout=10.0)
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
        assert response.status_code == 200  # a closed idle connection is never used for a request


async def test_no_connections_are_kept_to_a_backend_that_cannot_take_requests(warm_backend: CountingBackend) -> None:
    backend = warm_backend
    async with running_gateway([backend.url]) as gw:
        await eventually(lambda: backend.idle() >= 2, "two idle connections")
        gw.fleet.set_drained(gw.fleet.all()[0].id, True)
        for writer in backend.writers:
            writer.close()
        before = len(backend.connections)
        await asyncio.sleep(2.5)  # more than two warm-up rounds
        assert len(backend.connections) == before
