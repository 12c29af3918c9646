"""The one upstream HTTP/1.1 client of a router process: pooled keep-alive connections to backends.

Written on raw asyncio protocols with httptools instead of aiohttp because the hot path pays for every
layer (docs/proxy.md has the measurement): a request is one `transport.write`, a response is parsed
in C and handed over as bytes, and nothing is allocated per request beyond a future and a timer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from kvroute.proxy import http
from kvroute.tls import backend_context

# Past this many unread body bytes the upstream socket stops being read: a slow client slows the
# backend's stream through TCP back-pressure instead of growing the router's memory.
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18
# The largest body read whole (model listings, /metrics pages): vLLM's /metrics is tens to hundreds
# of KiB; a page of many MiB is a broken or hostile backend.
FETCH_LIMIT = 16 << 20


class UpstreamError(Exception):
    """An attempt failed; `kind` is what Fleet.report understands: "connect", "reset" or "timeout"
    (or "too_large": a body read whole went past FETCH_LIMIT)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    """Where one backend is reached and how requests to it are addressed."""

    host: str
    port: int
    prefix: bytes
    host_header: bytes
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname or "127.0.0.1"
        return cls(host, port, parts.path.rstrip("/").encode(), parts.netloc.encode(), tls)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time.

    The protocol is its own response reader: parser callbacks fill the state below and wake the
    single consumer (the relay) through `_waiter`; timeouts are timers that fail that waiter.
    """

    def __init__(self, pool: UpstreamPool, target: Target, first: tuple[bytes, bytes] | None = None) -> None:
        self.pool = pool
        self.target = target
        # The request a new connection carries, written the moment it connects (see UpstreamPool._connect).
        self._first = first
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        # Has carried a whole exchange: only then is a reset before any answer byte a keep-alive
        # timeout racing our request (sent again) rather than a backend failing it. A warm
        # connection that never carried one gets no such excuse, or a backend resetting every
        # request would see each one twice.
        self.reused = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.received_any = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = http.tcp_transport(transport)
        if self._first is not None:
            self.send_request(*self._first)
            self._first = None

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("reset", f"backend sent invalid HTTP: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and exc is None and self._until_close():
            # A response with neither a length nor chunks ends when the backend closes (HTTP/1.0 style);
            # httptools does not report that end itself.
            self.complete = True
            self.keep_alive = False
            self._wake()
        if not self.complete:
            self._fail(UpstreamError("reset", "backend closed the connection" + (f": {exc}" if exc else "")))
        self.pool._forget(self)

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- used by the relay --

    def send_request(self, head: bytes, body: bytes) -> None:
        """One write (one syscall) for the usual small body; a large one is not copied to join it."""
        assert self.transport is not None
        if len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)

    def _until_close(self) -> bool:
        if self.status in (204, 304) or self.status < 200:
            return False
        encoding = self.header(b"transfer-encoding")
        return self.header(b"content-length") is None and (encoding is None or b"chunked" not in encoding.lower())

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def wait_headers(self, timeout: float) -> None:
        while not self.headers_done:
            await self._wait(timeout, "no response headers from backend")

    async def next_chunk(self, timeout: float) -> bytes | None:
        """The next piece of body as it arrived, or None at the end of the response."""
        while not self._chunks:
            if self.complete:
                return None
            await self._wait(timeout, "backend went quiet")
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def finished(self) -> bool:
        """The whole response is in and handed over."""
        return self.complete and not self._chunks

    async def read_all(self, timeout: float, limit: int = FETCH_LIMIT) -> bytes:
        """The whole body, up to `limit` bytes. Chunks are taken as they come (so the back-pressure
        meant for slow clients does not stall a body that is read whole); past the limit the
        exchange fails instead of holding an endless page."""
        parts: list[bytes] = []
        size = 0
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                parts.append(chunk)
                size += len(chunk)
            self._buffered = 0
            if size > limit:
                raise UpstreamError("too_large", f"response body over {limit >> 20} MiB")
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            if self.complete:
                return b"".join(parts)
            await self._wait(timeout, "backend went quiet")

    def finish(self) -> None:
        """The exchange is over: keep the connection for the next request when HTTP allows it."""
        if self.complete and self.keep_alive and not self.closed and self.error is None:
            self.reused = True
            self.pool._put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close at once; a backend sees the request end (vLLM aborts it and frees its KV blocks)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    # -- internals --

    def reset_for_request(self) -> None:
        self.status = 0
        self.headers = []
        self.headers_done = False
        self.complete = False
        self.received_any = False
        self.keep_alive = False
        self.error = None
        self._chunks.clear()
        self._buffered = 0

    async def _wait(self, timeout: float, what: str) -> None:
        if self.error is not None:
            raise self.error
        loop = self.pool.loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(max(timeout, 0.0), _expire, waiter, what)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()


def _expire(waiter: asyncio.Future[None], what: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError("timeout", what))


class UpstreamPool:
    """Idle keep-alive connections per backend, last in first out (the warmest socket goes first)."""

    def __init__(self, connect_timeout: float, max_idle_per_target: int = 1024, *, ca_file: str = "",
                 verify: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self._tls_settings = (ca_file, verify)
        self.max_idle_per_target = max_idle_per_target
        self._idle: dict[Target, list[UpstreamConnection]] = {}
        self._targets: dict[str, Target] = {}
        self._ssl: ssl.SSLContext | None = None
        self._all: set[UpstreamConnection] = set()
        self._warming: dict[Target, int] = {}
        self._warm_tasks: set[asyncio.Task[None]] = set()

    def target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = Target.parse(url)
        return target

    async def exchange(self, target: Target, head: bytes, body: bytes, first_byte_timeout: float) -> UpstreamConnection:
        """Send one request and return its connection once the response headers are in.

        A reused connection may have been closed by the backend while idle (its keep-alive timeout);
        that is nobody's failure, so such a request is sent again once on a fresh connection.
        """
        conn = self._take_idle(target)
        if conn is not None:
            try:
                conn.send_request(head, body)
                await conn.wait_headers(first_byte_timeout)
                return conn
            except UpstreamError as exc:
                conn.abort()
                if not (conn.reused and exc.kind == "reset" and not conn.received_any):
                    raise
            except BaseException:  # the client went away: the backend must hear of it at once
                conn.abort()
                raise
        conn = await self._connect(target, (head, body))
        try:
            await conn.wait_headers(first_byte_timeout)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def fetch(self, url: str, path: bytes, timeout: float, json_body: bytes | None = None) -> tuple[int, bytes]:
        """One whole small exchange, GET (or POST of a JSON body) of `path` under `url`: status and body.

        For the model listing and the control plane's polls: they share the event loop with client
        requests, and this path costs a fraction of a general-purpose client's CPU per request, so
        a poll round no longer shows in the requests' tail latency (docs/proxy.md).
        """
        target = self.target(url)
        parts = [b"GET " if json_body is None else b"POST ", target.prefix, path,
                 b" HTTP/1.1\r\nhost: ", target.host_header, b"\r\naccept: application/json\r\n"]
        if json_body is not None:
            parts += [b"content-type: application/json\r\ncontent-length: ", b"%d\r\n" % len(json_body)]
        parts.append(b"\r\n")
        up = await self.exchange(target, b"".join(parts), json_body or b"", timeout)
        try:
            return up.status, await up.read_all(timeout)
        finally:
            up.finish()

    def keep_warm(self, url: str, count: int) -> None:
        """Open connections in the background until `url` has `count` idle ones.

        A request that finds an idle connection is written in the routing step itself; one that
        must connect first waits for the connect and then behind every other task of the loop
        (measured: a burst of 200 chats of 29 KB reached its backends 40-50 ms later than a
        request on an idle connection). So that the first requests of a burst after a quiet spell
        go out at once, a few connections are kept open; backends close idle ones after their
        keep-alive timeout (uvicorn: 5 s), and the next call opens them again."""
        target = self.target(url)
        idle = [conn for conn in self._idle.get(target, ()) if not conn.closed]
        self._idle[target] = idle
        for _ in range(count - len(idle) - self._warming.get(target, 0)):
            self._warming[target] = self._warming.get(target, 0) + 1
            task = self.loop.create_task(self._warm(target))
            self._warm_tasks.add(task)
            task.add_done_callback(self._warm_tasks.discard)

    async def _warm(self, target: Target) -> None:
        try:
            conn = await self._connect(target)
        except UpstreamError:
            return  # down or refusing: health checks say so; the next request connects itself
        finally:
            self._warming[target] -= 1
        self._put_back(conn)

    def _take_idle(self, target: Target) -> UpstreamConnection | None:
        idle = self._idle.get(target)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reset_for_request()
                return conn
        return None

    async def _connect(self, target: Target, first: tuple[bytes, bytes] | None = None) -> UpstreamConnection:
        """A new connection; `first` (head, body) is written from the protocol's connection_made.
        In a burst the task that asked for the connection resumes only after every task queued
        before it has run (a loop iteration later, behind the burst's other routing steps); the
        callback runs as soon as the connect completes, so the backend starts on the request that
        much sooner."""
        made: list[UpstreamConnection] = []

        def factory() -> UpstreamConnection:
            made.append(UpstreamConnection(self, target, first))
            return made[-1]

        tls = None
        if target.tls:
            if self._ssl is None:  # made on first use: a fleet without https never loads the CA store
                self._ssl = backend_context(*self._tls_settings)
            tls = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(factory, target.host, target.port, ssl=tls)
        except BaseException as exc:
            for orphan in made:  # connected (and maybe sent) just as the wait ended: not ours to keep
                orphan.abort()
            if isinstance(exc, TimeoutError):
                raise UpstreamError("connect", f"connect to {target.host}:{target.port} timed out") from None
            if isinstance(exc, OSError):
                raise UpstreamError("connect", f"cannot connect to {target.host}:{target.port}: "
                                               f"{exc.strerror or exc}") from None
            raise
        self._all.add(conn)
        return conn

    def _put_back(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.target, [])
        if len(idle) < self.max_idle_per_target:
            idle.append(conn)
        else:
            conn.abort()

    def _forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)

    def close(self) -> None:
        for task in list(self._warm_tasks):
            task.cancel()
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
