"""HTTP/1.1 framing and OpenAI-shaped error bodies, as bytes ready for `transport.write`."""

from __future__ import annotations

import asyncio
import json
import socket
import typing
from http import HTTPStatus

STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus
}

# Never relayed in either direction: they describe one hop, and the router frames each hop itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",
    }
)

# OpenAI's error types by status; any other 4xx is the client's request, any 5xx the service.
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Unknown\r\n".encode()


def error_object(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, typing.Any]:
    """OpenAI's error object, {"error": {"message", "type", "param", "code"}}: the one builder of it
    for the proxy's answers, its SSE error events and the admin API."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    return json.dumps(error_object(message, error_type(status), code, param)).encode()


def response(status: int, body: bytes, headers: list[bytes], keep_alive: bool,
             content_type: bytes = b"application/json") -> bytes:
    """A complete response with a known length; `headers` are ready-made "name: value\\r\\n" lines."""
    parts = [status_line(status), b"content-type: ", content_type, b"\r\ncontent-length: ",
             str(len(body)).encode(), b"\r\n"]
    parts.extend(headers)
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def tcp_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """The transport of a new connection, with Nagle off: every write is a whole message or SSE event.

    (uvloop's transports are not asyncio.Transport subclasses, hence a cast and not a check.)"""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return typing.cast(asyncio.Transport, transport)
