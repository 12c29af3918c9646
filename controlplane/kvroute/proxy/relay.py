"""What the data plane does with a request: the OpenAI surface, routing, the upstream exchange, retries.

Per proxied request the native core is crossed twice (route, release) plus first_token for streams;
the body goes to the core as the client's bytes and to the backend as the same bytes, except that a
streamed request gets `stream_options.include_usage` added so token counts come back (the extra
usage event is dropped before the client sees it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from typing import TYPE_CHECKING, Callable

from kvroute._native import KvrouteError, MalformedRequest, Queued, Rejected, Routed
from kvroute.config import rate_limiter
from kvroute.logs import request_id
from kvroute.proxy import http
from kvroute.proxy.sse import (MAX_EVENT_BYTES, OversizedEvent, StreamScanner, Usage, ask_for_usage, error_event,
                               usage_of_json)
from kvroute.proxy.request import Client, Request
from kvroute.proxy.upstream import Target, UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from kvroute._native import Endpoint, Priority
    from kvroute._native import Router
    from kvroute.admin.observe import Observer
    from kvroute.config import Settings
    from kvroute.control.fleet import Fleet

log = logging.getLogger("kvroute.proxy")

ENDPOINTS: dict[bytes, Endpoint] = {
    b"/v1/chat/completions": "chat",
    b"/v1/completions": "completions",
    b"/v1/embeddings": "embeddings",
    b"/v1/responses": "responses",
}
PRIORITIES: dict[bytes, Priority] = {b"high": "high", b"normal": "normal", b"low": "low"}
_RETRYABLE_STATUS = frozenset({502, 503, 504})
# Streams that end with `data: [DONE]` (the Responses API ends with a response.completed event instead).
_ENDS_WITH_DONE = frozenset({b"/v1/chat/completions", b"/v1/completions"})
# How often a queued request asks the core again even if no release in this process woke it.
_RECHECK_S = 1.0
# The core's names of the rate limits, as a client reads them.
_LIMITS = {"requests_per_s": "requests per second", "tokens_per_min": "tokens per minute"}
# Client headers the router consumes or re-frames instead of forwarding.
_NOT_FORWARDED = http.HOP_BY_HOP | {b"x-request-id", b"x-priority"}


class Failure:
    """An attempt that failed before any byte reached the client, so another backend may try."""

    __slots__ = ("status", "message", "code", "raw")

    def __init__(self, status: int, message: str, code: str, raw: bytes | None = None) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.raw = raw  # the backend's own error response, relayed when no retry is left


class RetryBudget:
    """Retries may add at most `ratio` of the request rate (after a small reserve), so a failing fleet
    sees its load grow by that fraction at most instead of by the attempt count."""

    def __init__(self, ratio: float, reserve: float = 10.0) -> None:
        self.ratio = ratio
        self.cap = max(reserve, 100.0)
        self.balance = reserve

    def deposit(self) -> None:
        if self.balance < self.cap:
            self.balance += self.ratio

    def withdraw(self) -> bool:
        if self.balance >= 1.0:
            self.balance -= 1.0
            return True
        return False


# Bodies from this size are routed on a worker thread when prompts are tokenized: ~4k tokens, a
# few ms cold, well above the ~50 µs a thread hop costs (below it, the hop costs more than it saves).
OFFLOAD_ROUTE_BYTES = 16 * 1024


def new_request_id() -> bytes:
    return os.urandom(12).hex().encode()


class Dispatcher:
    def __init__(self, settings: Settings, router: Router, fleet: Fleet, observer: Observer | None,
                 pool: UpstreamPool, draining: Callable[[], bool]) -> None:
        self.settings = settings
        self.router = router
        self.fleet = fleet
        self.pool = pool
        self.draining = draining  # the server stops keep-alive once it drains
        self.loop = asyncio.get_running_loop()
        # Tokenizing a long prompt the engine has not seen costs ~1 µs a token (docs/benchmarks.md:
        # ~35 ms at 32k): done on the event loop it would stall every other request. The core
        # releases the GIL while it tokenizes, so a worker thread lets the loop go on meanwhile.
        self.offload_route = bool(router.tokenizer_models())
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.budget = RetryBudget(settings.retry_budget)
        self.observer = observer
        # config.validate checked every tier named here.
        self.api_key_tiers: dict[bytes, Priority] = {key.encode(): PRIORITIES[tier.encode()]
                                                     for key, tier in settings.api_key_tiers.items()}
        self.limiter = rate_limiter(settings)  # None: no key is limited, nothing to ask

    def _keep_alive(self, req: Request) -> bool:
        """Whether this answer keeps the connection open: the client asked for it and we are not draining."""
        return req.keep_alive and not self.draining()

    # -- surface --

    async def handle(self, conn: Client, req: Request) -> None:
        if req.reject:
            req.keep_alive = False
            return self._error(conn, req, 413, f"request body exceeds max_body_size ({self.settings.max_body_size} bytes)",
                               "request_too_large")
        endpoint = ENDPOINTS.get(req.path)
        if endpoint is not None:
            if req.method != b"POST":
                return self._error(conn, req, 405, f"{req.path.decode()} takes POST", "method_not_allowed")
            return await self.forward(conn, req, endpoint)
        if req.method == b"GET":
            if req.path == b"/v1/models":
                return await self.models(conn, req)
            if req.path == b"/health":
                return self._json(conn, req, 200, b'{"status":"ok"}')
            if req.path == b"/ready":
                if self._healthy_backends():
                    return self._json(conn, req, 200, b'{"status":"ready"}')
                return self._error(conn, req, 503, "no healthy backend", "no_backend")
        return self._error(conn, req, 404, f"unknown path {req.path.decode(errors='replace')}", "not_found")

    async def models(self, conn: Client, req: Request) -> None:
        """The union of the models of healthy backends: the control plane's view where it has one,
        else asked from the backend right now."""
        listed: dict[str, dict[str, object]] = {}
        healthy = self._healthy_backends()
        unknown = [backend.url for backend in healthy if not backend.models]
        fetched = await asyncio.gather(*(self._fetch_models(url) for url in unknown)) if unknown else []
        for backend in healthy:
            for name in backend.models:
                listed.setdefault(name, {"id": name, "object": "model", "created": 0, "owned_by": "vllm"})
        for entries in fetched:
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    listed.setdefault(entry["id"], entry)
        body = json.dumps({"object": "list", "data": list(listed.values())}).encode()
        self._json(conn, req, 200, body)

    def _healthy_backends(self) -> list:
        return [b for b in self.fleet.all() if getattr(b, "healthy", True)]

    async def _fetch_models(self, url: str) -> list[object]:
        try:
            status, body = await self.pool.fetch(url, b"/v1/models", self.settings.connect_timeout)
            data = json.loads(body).get("data", []) if status == 200 else []
            return data if isinstance(data, list) else []
        except (UpstreamError, ValueError, AttributeError):
            return []

    # -- the proxied path --

    async def forward(self, conn: Client, req: Request, endpoint: Endpoint) -> None:
        """Proxy one OpenAI request, and record its outcome for the admin API's metrics."""
        started = self.loop.time()
        rid = req.header(b"x-request-id") or new_request_id()
        request_id.set(rid.decode(errors="replace"))  # log lines of this request carry it
        cut_off = True
        try:
            await self._forward(conn, req, endpoint, rid)
            cut_off = False
        finally:
            if self.observer is not None:
                # 499: the client went away first (nginx's name for it); a cut-off after sending keeps its status.
                status = req.status
                if cut_off and not status:
                    status = 499 if conn.closed else 503
                self.observer.request_done(req.model, req.backend, status, req.priority, req.ttft,
                                           self.loop.time() - started)

    async def _forward(self, conn: Client, req: Request, endpoint: Endpoint, rid: bytes) -> None:
        ctype = req.header(b"content-type")
        if ctype is None or ctype.partition(b";")[0].strip().lower() != b"application/json":
            return self._error(conn, req, 415, "content-type must be application/json", "unsupported_media_type",
                               rid=rid)
        priority = self._priority(req)
        if priority is None:
            return self._error(conn, req, 400, "x-priority must be one of high, normal, low", "invalid_priority",
                               param="x-priority", rid=rid)
        req.priority = priority
        limiter = self.limiter
        if limiter is None:
            return await self._route_and_send(conn, req, endpoint, rid)
        key = self._api_key(req).decode(errors="replace")
        estimate = int(len(req.body) / self.settings.bytes_per_token)  # the core's own estimate of a prompt
        limited = limiter.admit(key, estimate, self.loop.time())
        if limited is not None:
            limit, wait_s = limited
            return self._error(conn, req, 429, f"this API key is over its limit of {_LIMITS[limit]}; retry in "
                               f"{wait_s:.1f} s",
                               "rate_limit_exceeded", rid=rid, extra=[b"retry-after: %d\r\n" % max(1, math.ceil(wait_s))])
        try:
            await self._route_and_send(conn, req, endpoint, rid)
        finally:
            # Settle against what the backends reported. A request that reached none gets its
            # estimate back; one that did but reported nothing (an error, a cut) keeps it.
            used = req.tokens if req.tokens or not req.backend else estimate
            limiter.charge(key, used - estimate, self.loop.time())

    async def _route_and_send(self, conn: Client, req: Request, endpoint: Endpoint, rid: bytes) -> None:
        priority = req.priority
        session = req.header(b"x-session-id")
        session_key = session.decode(errors="replace") if session is not None else None
        router = self.router
        try:
            if self.offload_route and len(req.body) >= OFFLOAD_ROUTE_BYTES:
                decision = await self.loop.run_in_executor(None, router.route, req.body, endpoint, priority,
                                                           session_key)
            else:
                decision = router.route(req.body, endpoint, priority, session_key)
        except MalformedRequest as exc:
            return self._error(conn, req, 400, str(exc) or "malformed request body", "invalid_request",
                               param=getattr(exc, "param", None), rid=rid)
        self.budget.deposit()
        excluded: list[str] = []
        failure: Failure | None = None
        payload: tuple[bytes, bool] | None = None
        while True:
            req.model = decision.model
            if isinstance(decision, Queued):
                woken = await self._wait_turn(decision)
                if woken is None:
                    return self._error(conn, req, 503, f"waited in the {priority} queue past queue_timeout",
                                       "queue_timeout", rid=rid)
                decision = woken
                continue
            if isinstance(decision, Rejected):
                if failure is not None:
                    return self._fail(conn, req, failure, rid)
                return self._rejected(conn, req, decision, rid)
            assert isinstance(decision, Routed)
            req.backend = decision.backend_id
            if payload is None:
                payload = ask_for_usage(req.body) if decision.stream and endpoint != "embeddings" else (req.body, False)
            failure = await self._attempt(conn, req, rid, decision, payload)
            if failure is None:
                return
            excluded.append(decision.backend_id)
            if len(excluded) > self.settings.retry_attempts or not self.budget.withdraw():
                return self._fail(conn, req, failure, rid)
            if self.observer is not None:
                self.observer.retry(decision.backend_id)
            decision = router.route(req.body, endpoint, priority, session_key, excluded)

    def _priority(self, req: Request) -> Priority | None:
        given = req.header(b"x-priority")
        if given is not None:
            return PRIORITIES.get(given.strip().lower())
        if self.api_key_tiers:
            return self.api_key_tiers.get(self._api_key(req), "normal")
        return "normal"

    @staticmethod
    def _api_key(req: Request) -> bytes:
        """The client's bearer token, b"" without one."""
        auth = req.header(b"authorization")
        if auth is not None and auth[:7].lower() == b"bearer ":
            return auth[7:].strip()
        return b""

    async def _wait_turn(self, queued: Queued) -> Routed | Rejected | None:
        """Hold a queued request until the core routes or rejects it; None past `queue_timeout`.

        Woken by the ids `release` returns, and every `_RECHECK_S` regardless: room can also appear
        without a release in this process (the polled load of a backend dropped, a backend came back).
        """
        loop = self.loop
        deadline = loop.time() + self.settings.queue_timeout
        decision: Routed | Rejected | Queued = queued
        while isinstance(decision, Queued):
            wait_id = decision.wait_id
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._leave_queue(wait_id)
                return None
            waiter = self.waiters[wait_id] = loop.create_future()
            try:
                async with asyncio.timeout(min(remaining, _RECHECK_S)):
                    await waiter
            except TimeoutError:
                self.waiters.pop(wait_id, None)
            except asyncio.CancelledError:
                self._leave_queue(wait_id)
                raise
            try:
                decision = self.router.resume(wait_id)
            except KvrouteError:
                return None  # the core no longer holds it
        return decision

    def _leave_queue(self, wait_id: int) -> None:
        self.waiters.pop(wait_id, None)
        try:
            self.router.cancel_wait(wait_id)
        except KvrouteError:
            pass  # already gone from the core's queue (a backend change rejected it): nothing to undo

    def wake(self, wait_ids: list[int]) -> None:
        for wait_id in wait_ids:
            waiter = self.waiters.pop(wait_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _release(self, ticket: int, ok: bool, usage: Usage | None, latency_s: float) -> None:
        if usage is not None:
            woken = self.router.release(ticket, ok, usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens,
                                        latency_s)
        else:
            woken = self.router.release(ticket, ok, latency_s=latency_s)
        if woken:
            self.wake(woken)

    async def _attempt(self, conn: Client, req: Request, rid: bytes, routed: Routed,
                       payload: tuple[bytes, bool]) -> Failure | None:
        """One try on the backend the core chose; a Failure means nothing reached the client."""
        settings = self.settings
        backend_id = routed.backend_id
        backend = self.fleet.get(backend_id)
        loop = self.loop
        started = loop.time()
        ok = False
        usage: Usage | None = None
        up: UpstreamConnection | None = None
        try:
            if backend is None:
                return Failure(502, f"backend {backend_id} left the fleet", "backend_gone")
            target = self.pool.target(backend.url)
            body, strip_usage = payload
            head = self._upstream_head(req, target, rid, len(body))
            deadline = started + settings.total_timeout
            try:
                up = await self.pool.exchange(target, head, body, min(settings.first_byte_timeout, settings.total_timeout))
            except UpstreamError as exc:
                self.fleet.report(backend_id, False, exc.kind)
                if exc.kind == "timeout":
                    # The backend may be working on it: retrying would double the load it is drowning in.
                    self._error(conn, req, 504, f"backend {backend_id} sent no response within first_byte_timeout",
                                "timeout", rid=rid)
                    return None
                return Failure(502, f"backend {backend_id} failed: {exc}", "bad_gateway")
            status = up.status
            if status in _RETRYABLE_STATUS:
                self.fleet.report(backend_id, False, "http_5xx")
                try:
                    raw = await up.read_all(settings.idle_timeout)
                except UpstreamError:
                    raw = b""
                return Failure(status, f"backend {backend_id} answered {status}", "bad_gateway",
                               raw=self._relayed(up, routed, rid, req, raw))
            ctype = up.header(b"content-type") or b""
            if ctype.startswith(b"text/event-stream"):
                scanner = StreamScanner(strip_usage, expect_done=req.path in _ENDS_WITH_DONE)
                usage = scanner.usage
                failure = await self._stream(conn, req, rid, routed, up, scanner, started, deadline)
                if failure is not None:
                    return failure
                if up.complete and scanner.whole:  # otherwise _stream reported the failure and told the client
                    ok = self._answered(backend_id, status)
                return None
            try:
                data = await up.read_all(min(settings.idle_timeout, deadline - loop.time()))
            except UpstreamError as exc:
                self.fleet.report(backend_id, False, exc.kind)
                if exc.kind == "timeout":
                    self._error(conn, req, 504, f"backend {backend_id} stopped answering", "timeout", rid=rid)
                    return None
                return Failure(502, f"backend {backend_id} failed: {exc}", "bad_gateway")
            usage = Usage()
            usage_of_json(data, usage)
            ok = self._answered(backend_id, status)
            req.status = up.status
            conn.write(self._relayed(up, routed, rid, req, data))
            return None
        finally:
            if up is not None:
                up.finish()
            self._release(routed.ticket, ok, usage, loop.time() - started)
            if usage is not None and usage.seen:
                req.tokens += usage.prompt_tokens + usage.completion_tokens

    def _answered(self, backend_id: str, status: int) -> bool:
        """Record a whole answer for the backend's health; True when it may teach the core the
        backend's speed: only answers that did the work (a 400 is fast for reasons that say nothing
        about its load)."""
        self.fleet.report(backend_id, status < 500, None if status < 500 else "http_5xx")
        return status < 400

    async def _stream(self, conn: Client, req: Request, rid: bytes, routed: Routed,
                      up: UpstreamConnection, scanner: StreamScanner, started: float, deadline: float) -> Failure | None:
        """Relay an SSE body event by event. Events before the first content (a chat stream's role
        chunk, which some engines send before any work is done) are held back and the status line
        goes out with the first content, so a backend that fails before producing anything can still
        be retried elsewhere."""
        settings = self.settings
        loop = self.loop
        chunked = req.http11
        timeout = settings.first_byte_timeout
        waiting_first = True
        held = b""
        while True:
            try:
                piece = await up.next_chunk(min(timeout, deadline - loop.time()))
            except UpstreamError as exc:
                self.fleet.report(routed.backend_id, False, exc.kind)
                if not req.responded:
                    if exc.kind == "timeout":
                        self._error(conn, req, 504, f"backend {routed.backend_id} sent no event in time", "timeout",
                                    rid=rid)
                        return None
                    return Failure(502, f"backend {routed.backend_id} failed: {exc}", "bad_gateway")
                if exc.kind != "timeout":
                    what = "failed mid-stream"
                elif loop.time() >= deadline:
                    what = "ran past total_timeout"
                else:
                    what = "went quiet past idle_timeout"
                self._cut(conn, req, error_event(f"backend {routed.backend_id} {what}", "api_error",
                                                 "timeout" if exc.kind == "timeout" else "backend_error"))
                return None
            last = piece is None or up.finished()
            try:
                out = scanner.feed(piece) if piece is not None else b""
            except OversizedEvent as exc:
                self.fleet.report(routed.backend_id, False, "protocol")
                message = f"backend {routed.backend_id} sent {exc}"
                if not req.responded:
                    return Failure(502, message, "bad_gateway")
                self._cut(conn, req, error_event(message, "api_error", "backend_error"))
                return None
            if waiting_first and scanner.first_content:
                waiting_first = False
                timeout = settings.idle_timeout
                req.ttft = loop.time() - started
                self.router.first_token(routed.ticket, req.ttft)
            if last:
                out += scanner.rest()
                if not scanner.whole:
                    self.fleet.report(routed.backend_id, False, "reset")
                    message = f"backend {routed.backend_id} ended the stream without [DONE]"
                    if not req.responded:
                        return Failure(502, message, "bad_gateway")
                    out += error_event(message, "api_error", "backend_error")
            elif not out:
                continue  # only part of an event so far
            if waiting_first and not last and len(held) < MAX_EVENT_BYTES:
                held += out  # nothing a client can use yet
                continue
            if held:
                out, held = held + out, b""
            data = http.chunk(out) if chunked and out else out
            if last and chunked:
                data += http.LAST_CHUNK  # the end goes out with the last events: one write, not two
            if not req.responded:
                req.status, req.streaming = up.status, True
                data = self._stream_head(up, routed, rid, req, chunked) + data
            conn.write(data)
            if last:
                break
            await conn.drain()
        if not chunked:
            req.keep_alive = False  # an HTTP/1.0 stream ends with the connection
        return None

    def _cut(self, conn: Client, req: Request, event: bytes) -> None:
        """End a stream that cannot be finished: an error event the client can see, then close."""
        req.keep_alive = False
        conn.write(http.chunk(event) + http.LAST_CHUNK if req.http11 else event)

    # -- framing --

    def _upstream_head(self, req: Request, target: Target, rid: bytes, length: int) -> bytes:
        parts = [req.method, b" ", target.prefix, req.path]
        if req.query:
            parts += [b"?", req.query]
        parts += [b" HTTP/1.1\r\nhost: ", target.host_header, b"\r\n"]
        forward_key = self.settings.forward_api_key
        for name, value in req.headers:
            if name in _NOT_FORWARDED or (name == b"authorization" and not forward_key):
                continue
            parts += [name, b": ", value, b"\r\n"]
        parts += [b"x-request-id: ", rid, b"\r\ncontent-length: ", str(length).encode(), b"\r\n\r\n"]
        return b"".join(parts)

    def _response_headers(self, up: UpstreamConnection, routed: Routed, rid: bytes) -> list[bytes]:
        lines = []
        for name, value in up.headers:
            low = name.lower()
            if low in http.HOP_BY_HOP or low == b"x-request-id":
                continue
            lines.append(name + b": " + value + b"\r\n")
        lines.append(b"x-request-id: " + rid + b"\r\n")
        if self.settings.debug_headers:
            lines.append(b"x-kvroute-backend: " + routed.backend_id.encode() + b"\r\n")
            lines.append(b"x-kvroute-branch: " + routed.branch.encode() + b"\r\n")
            # The prediction the decision was made on, to set against the backend's usage.cached_tokens.
            lines.append(b"x-kvroute-cached-tokens: " + str(routed.cached_tokens).encode() + b"\r\n")
            lines.append(b"x-kvroute-key-space: " + routed.key_space.encode() + b"\r\n")
            # The cost model's TTFT for this backend, to set against the measured one (calibration).
            lines.append(b"x-kvroute-predicted-ttft-ms: " + b"%.1f" % (routed.predicted_ttft_s * 1000.0) + b"\r\n")
        return lines

    def _relayed(self, up: UpstreamConnection, routed: Routed, rid: bytes, req: Request, body: bytes) -> bytes:
        keep_alive = self._keep_alive(req)
        parts = [http.status_line(up.status)]
        parts += self._response_headers(up, routed, rid)
        parts += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", body]
        return b"".join(parts)

    def _stream_head(self, up: UpstreamConnection, routed: Routed, rid: bytes, req: Request, chunked: bool) -> bytes:
        parts = [http.status_line(up.status)]
        parts += self._response_headers(up, routed, rid)
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not chunked or not self._keep_alive(req):
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- answers the router gives itself --

    def _json(self, conn: Client, req: Request, status: int, body: bytes) -> None:
        req.status = status
        conn.write(http.response(status, body, [], self._keep_alive(req)))

    def _error(self, conn: Client, req: Request, status: int, message: str, code: str, *,
               param: str | None = None, rid: bytes | None = None, extra: list[bytes] | None = None) -> None:
        headers = list(extra or [])
        if rid is not None:
            headers.append(b"x-request-id: " + rid + b"\r\n")
        req.status = status
        conn.write(http.response(status, http.error_body(status, message, code, param), headers,
                                 self._keep_alive(req)))

    def _fail(self, conn: Client, req: Request, failure: Failure, rid: bytes) -> None:
        if failure.raw is not None:
            req.status = failure.status
            conn.write(failure.raw)
            return
        self._error(conn, req, failure.status, failure.message, failure.code, rid=rid)

    def _rejected(self, conn: Client, req: Request, rejected: Rejected, rid: bytes) -> None:
        reason = rejected.reason
        message = rejected.message or reason
        if reason == "unknown_model":
            return self._error(conn, req, 404, message or f"model {rejected.model!r} is not served here",
                               "model_not_found", param="model", rid=rid)
        retry_after = [b"retry-after: %d\r\n" % max(1, math.ceil(rejected.retry_after_s))]
        if reason == "no_backend":
            return self._error(conn, req, 503, message, "no_backend", rid=rid, extra=retry_after)
        text = f"{message} (tier {rejected.tier})" if rejected.tier not in message else message
        self._error(conn, req, 429, text, "overloaded" if reason == "shed" else reason, rid=rid, extra=retry_after)

