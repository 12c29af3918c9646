"""The listening side of the data plane: a raw asyncio protocol per client connection, parsed by httptools.

No web framework sits on the hot path: a request is parsed in C, handed to the dispatcher as one
`Request`, and answered with single `transport.write` calls. One task per request carries it
through routing and the upstream exchange; a client that goes away cancels that task, which closes
the upstream request at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from typing import TYPE_CHECKING

import httptools

from kvroute.loops import every
from kvroute.proxy import http
from kvroute.proxy.relay import Dispatcher
from kvroute.proxy.request import Request
from kvroute.proxy.sse import error_event
from kvroute.proxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from kvroute._native import Router
    from kvroute.admin.observe import Observer
    from kvroute.config import Settings
    from kvroute.control.fleet import Fleet

log = logging.getLogger("kvroute.proxy")

# Requests a client may pipeline ahead of the one being served before its socket stops being read.
_MAX_PIPELINED = 16
# Idle upstream connections kept open to each routable backend, checked this often: the first
# requests of a burst are written in their routing step instead of waiting for a connect
# (UpstreamPool.keep_warm has the measurement). A burst's later requests connect as they come.
WARM_CONNECTIONS = 2
WARM_PERIOD_S = 1.0
# A request line plus headers larger than this is answered 431: nothing legitimate needs more, and
# httptools itself sets no bound, so a client could grow a connection's buffers without limit.
MAX_HEAD_BYTES = 64 * 1024
# After refusing a request the router reads and discards what the client is still sending, up to
# these bounds, before closing (a lingering close, as nginx does): a client writes its whole body
# before it reads, and closing on unread bytes resets the connection, losing the answer it was sent.
LINGER_BYTES = 256 * 1024 * 1024
LINGER_SECONDS = 10.0


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        self.max_body = server.settings.max_body_size
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.current: Request | None = None
        self.pending: deque[Request] = deque()
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._reject = 0
        self._head_size = 0
        self._lingering = False
        self._discarded = 0
        self.last_active = self.loop.time()
        # When the request being received began (None between requests): a client must finish
        # sending within request_read_timeout, or it could hold a connection by trickling bytes.
        self.receiving_since: float | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = http.tcp_transport(transport)
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        if self._lingering:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.refuse(400, "protocol upgrades are not supported", "bad_request")
        except httptools.HttpParserError as exc:
            self.refuse(400, f"malformed HTTP request: {exc}", "bad_request")

    def eof_received(self) -> bool:
        # A client that half-closes is treated as gone: HTTP clients do not half-close while waiting
        # for an answer, and a dead peer must release its backend slot at once.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        self.receiving_since = self.last_active
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._reject = 0
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES and not self._lingering:
            self.refuse(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes",
                        "request_header_fields_too_large")

    def on_headers_complete(self) -> None:
        if self._lingering:
            return
        expect_continue = False
        for name, value in self._headers:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body:
                    self._reject = 413
            elif name == b"expect":
                expect_continue = value.lower() == b"100-continue"
        if self._reject == 413 and self.task is None and not self.pending:
            # Refuse before the body crosses the network; the connection cannot be reused after.
            self.refuse(413, f"request body exceeds max_body_size ({self.max_body} bytes)", "request_too_large")
            return
        if expect_continue and not self._reject and self.transport is not None:
            self.transport.write(http.CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._reject or self._lingering:
            return
        self._size += len(body)
        if self._size > self.max_body:
            self._reject = 413
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.receiving_since = None
        if self._lingering or self.transport is None or self.transport.is_closing():
            return  # refused while parsing (413 before the body, 431): nothing more to answer
        parser = self.parser
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(parser.get_method(), self._url, self._headers, body, parser.should_keep_alive(),
                          parser.get_http_version() == "1.1", self._reject)
        self._body = []
        if self.task is None:
            self.task = self.loop.create_task(self._serve(request))
        else:
            self.pending.append(request)
            if len(self.pending) >= _MAX_PIPELINED and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()

    # -- used by the dispatcher --

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client's socket buffer is full: a slow reader slows its stream, not the router."""
        if self._write_paused and not self.closed:
            self._drain = self.loop.create_future()
            await self._drain

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    # -- internals --

    async def _serve(self, request: Request) -> None:
        dispatch = self.server.dispatcher.handle
        try:
            while True:
                self.current = request
                try:
                    await dispatch(self, request)
                except asyncio.CancelledError:
                    self._end_cut_off(request, 503, "the router is shutting down", "shutdown")
                    return
                except Exception:
                    log.exception("unhandled error serving %s", request.path.decode(errors="replace"))
                    self._end_cut_off(request, 500, "internal error in the router", "internal_error")
                    return
                if not request.keep_alive or self.server.draining or self.closed:
                    self.close()
                    return
                if not self.pending:
                    return
                request = self.pending.popleft()
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
        finally:
            self.current = None
            self.task = None
            self.last_active = self.loop.time()
            if self.receiving_since is not None:  # a pipelined request's clock starts once it may be read
                self.receiving_since = self.last_active

    def _end_cut_off(self, request: Request, status: int, message: str, code: str) -> None:
        """A request ended early (shutdown past the grace period, or a bug): say so if the client is still there."""
        if not self.closed:
            if request.streaming:
                self.write(http.chunk(error_event(f"{message}; the stream was cut off", "api_error", code))
                           + http.LAST_CHUNK)
            elif not request.responded:
                self.write(http.response(status, http.error_body(status, message, code), [], keep_alive=False))
        self.close()

    def refuse(self, status: int, message: str, code: str) -> None:
        """Answer an error and close: what was received cannot be trusted to frame a next request.

        The close lingers: the answer goes out with a FIN, and what the client still sends is read
        and dropped (bounded by LINGER_BYTES and LINGER_SECONDS) until it hangs up, so a client that
        writes a whole oversized body before reading gets the 413 instead of a connection reset."""
        if self._lingering:
            return
        self.write(http.response(status, http.error_body(status, message, code), [], keep_alive=False))
        transport = self.transport
        if self.task is not None or transport is None or transport.is_closing():
            self.close()  # an earlier pipelined answer is still being written: it ends with the connection
            return
        self._lingering = True
        self.receiving_since = None
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.close)


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext | None:
    """The server side of HTTPS, or None for plain HTTP. HTTP/1.1 is all this server speaks, so that
    is all ALPN offers (a client asking for h2 falls back to it)."""
    if not certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile or None)
    context.set_alpn_protocols(["http/1.1"])
    return context


class ProxyServer:
    """The data plane of one router process; `Gateway.proxy` once started."""

    def __init__(self, settings: Settings, router: Router, fleet: Fleet, observer: Observer | None) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.pool = UpstreamPool(settings.connect_timeout, ca_file=settings.backend_ca_file,
                                 verify=settings.backend_tls_verify)
        self.dispatcher = Dispatcher(settings, router, fleet, observer, self.pool, lambda: self.draining)
        self.fleet = fleet
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._warmer: asyncio.Task[None] | None = None
        self.port = 0

    async def listen(self, sock: socket.socket | None = None) -> None:
        settings = self.settings
        tls = tls_context(settings.tls_certfile, settings.tls_keyfile)
        if sock is not None:
            self._server = await self.loop.create_server(lambda: ClientConnection(self), sock=sock, backlog=4096,
                                                         ssl=tls)
        else:
            self._server = await self.loop.create_server(
                lambda: ClientConnection(self), settings.host, settings.port, backlog=4096,
                reuse_port=settings.workers > 1 or None, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = self.loop.create_task(self._sweep_idle())
        self._warmer = self.loop.create_task(every(WARM_PERIOD_S, self._keep_warm, log, "upstream warm-up"))

    async def _sweep_idle(self) -> None:
        """Close keep-alive connections idle past `keepalive_timeout`, and answer 408 to requests not
        received whole within `request_read_timeout`: a sweep every few seconds costs the hot path
        nothing (one timestamp per read) where a timer per request would not."""
        settings = self.settings
        idle_timeout, read_timeout = settings.keepalive_timeout, settings.request_read_timeout
        period = min(5.0, max(min(idle_timeout, read_timeout) / 4, 0.05))

        def sweep() -> None:
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.task is not None:
                    continue  # answering: a pipelined request behind it waits its turn
                if conn.receiving_since is not None and conn.receiving_since < now - read_timeout:
                    conn.refuse(408, f"the request was not received whole within request_read_timeout "
                                     f"({read_timeout:g} s)", "request_timeout")
                elif conn.last_active < now - idle_timeout:
                    conn.close()

        await every(period, sweep, log, "idle sweep", sleep_first=True)

    def _keep_warm(self) -> None:
        """Idle upstream connections ready for the next burst (UpstreamPool.keep_warm), to the
        backends requests may go to; often enough to reopen those a backend's keep-alive timeout
        (uvicorn: 5 s) closed."""
        for backend in self.fleet.all():
            if backend.routable():
                self.pool.keep_warm(backend.url, WARM_CONNECTIONS)

    async def close(self, grace_s: float) -> None:
        """Stop accepting; let in-flight requests finish for up to `grace_s`; then cut the rest off
        with an SSE error event (or a 503 if nothing was sent yet)."""
        self.draining = True
        for task in (self._sweeper, self._warmer):
            if task is not None:
                task.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        busy = [conn.task for conn in self.connections if conn.task is not None]
        if busy:
            _, still = await asyncio.wait(busy, timeout=grace_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5.0)
        for conn in list(self.connections):
            conn.close()
        self.pool.close()


async def start(settings: Settings, router: Router, fleet: Fleet, observer: Observer | None,
                sock: socket.socket | None = None) -> ProxyServer:
    server = ProxyServer(settings, router, fleet, observer)
    await server.listen(sock)
    return server
