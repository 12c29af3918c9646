"""Hostile and broken HTTP from clients, over raw sockets: every case gets a clear answer and reaches no backend."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import openai
import pytest

from kvroute.proxy import server as proxy_server

from .helpers import raw_exchange, running_gateway

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


def openai_error(raw: bytes, status: int) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), raw[:300]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


async def post_raw(port: int, body: bytes) -> bytes:
    return await raw_exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body))


def post_with_urllib(port: int, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_a_40_mib_body_gets_a_413_that_urllib_and_the_openai_client_read(scripted) -> None:
    # The client writes the whole body before it reads: without a lingering close it gets a reset.
    backend = await scripted()
    big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * (40 << 20) + b'"}]}'
    async with running_gateway([backend.url], max_body_size=1 << 20) as gw:
        status, body = await asyncio.to_thread(post_with_urllib, gw.proxy.port, big)
        assert status == 413, body[:300]
        assert json.loads(body)["error"]["code"] == "request_too_large"

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw.proxy.port}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            await asyncio.to_thread(client.chat.completions.create, model="m",
                                    messages=[{"role": "user", "content": "x" * (40 << 20)}])
        assert caught.value.status_code == 413
        assert "max_body_size" in caught.value.message
    assert backend.seen == []


async def test_a_client_that_never_stops_sending_is_cut_after_the_linger_bound(scripted, monkeypatch) -> None:
    monkeypatch.setattr(proxy_server, "LINGER_BYTES", 1 << 20)
    backend = await scripted()
    async with running_gateway([backend.url], max_body_size=1000) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000000000\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ")
        sent = 0
        with pytest.raises(ConnectionError):
            for _ in range(4096):  # 256 MiB at most: far past the 1 MiB bound, so the router must close first
                writer.write(b"x" * 65536)
                await writer.drain()
                sent += 65536
        assert sent >= 1 << 20  # the router read (and dropped) the bound before it closed
        writer.close()
    assert backend.seen == []


@pytest.mark.parametrize("name, request_bytes", [
    ("content-length with transfer-encoding",
     b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n"),
    ("duplicate content-length",
     b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 40\r\n\r\n" + CHAT),
    ("obs-fold header", b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-a: b\r\n c\r\n\r\n"),
    ("bare LF line ends", b"GET /v1/models HTTP/1.1\nhost: x\n\n"),
    ("chunk size that is not hex",
     b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n" + CHAT),
])
async def test_request_smuggling_shapes_get_400_and_a_closed_connection(scripted, name: str,
                                                                        request_bytes: bytes) -> None:
    backend = await scripted()
    async with running_gateway([backend.url]) as gw:
        raw = await raw_exchange(gw.proxy.port, request_bytes)
    error = openai_error(raw, 400)
    assert error["code"] == "bad_request", name
    assert raw.count(b"HTTP/1.1 ") == 1, f"{name}: a second request was read from a smuggled body"
    assert backend.seen == []


async def test_oversized_headers_get_431(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url]) as gw:
        many = b"".join(b"x-h%d: %b\r\n" % (i, b"v" * 1000) for i in range(100))  # ~100 KiB of small headers
        raw = await raw_exchange(gw.proxy.port, b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
        assert openai_error(raw, 431)["type"] == "invalid_request_error"
        long_url = b"GET /v1/models?" + b"q" * (proxy_server.MAX_HEAD_BYTES + 1) + b" HTTP/1.1\r\nhost: x\r\n\r\n"
        openai_error(await raw_exchange(gw.proxy.port, long_url), 431)
        # Just under the bound is a normal request.
        fits = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-a: " + b"v" * 60000 + b"\r\nconnection: close\r\n\r\n"
        assert (await raw_exchange(gw.proxy.port, fits)).startswith(b"HTTP/1.1 200 ")
    assert backend.seen == []


async def test_invalid_utf8_in_the_body_is_400_in_openai_shape(scripted) -> None:
    backend = await scripted()
    body = b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    async with running_gateway([backend.url]) as gw:
        raw = await post_raw(gw.proxy.port, body)
    assert openai_error(raw, 400)["type"] == "invalid_request_error"
    assert backend.seen == []


@pytest.mark.parametrize("where", ["unread field", "message content"])
async def test_deeply_nested_json_is_400_in_openai_shape(scripted, where: str) -> None:
    # serde skips unknown fields at any depth: without the core's own bound this body reached the engine.
    deep = b"[" * 100_000 + b"]" * 100_000
    if where == "unread field":
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ' + deep + b"}"
    else:
        body = b'{"model": "m", "messages": [{"role": "user", "content": ' + deep + b"}]}"
    backend = await scripted()
    async with running_gateway([backend.url]) as gw:
        raw = await post_raw(gw.proxy.port, body)
    error = openai_error(raw, 400)
    assert error["type"] == "invalid_request_error" and "deeper than 128" in error["message"]
    assert backend.seen == []


async def test_slowloris_connections_are_cut_and_hold_nothing_others_need(scripted) -> None:
    # 200 clients that send a request head one byte at a time: each is answered 408 and closed at the
    # read deadline, and a normal client is served while they trickle.
    backend = await scripted()
    async with running_gateway([backend.url], request_read_timeout=1.0) as gw:
        async def slow() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy.port)
            try:
                for byte in b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n":
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)
                    if reader.at_eof():
                        break
                return await asyncio.wait_for(reader.read(), 30)
            except ConnectionError:
                return b""
            finally:
                writer.close()

        slow_clients = [asyncio.create_task(slow()) for _ in range(200)]
        await asyncio.sleep(0.3)
        normal = await post_raw(gw.proxy.port, CHAT)
        assert normal.startswith(b"HTTP/1.1 200 "), normal[:200]
        answers = await asyncio.wait_for(asyncio.gather(*slow_clients), 60)
    assert all(a == b"" or a.startswith(b"HTTP/1.1 408 ") for a in answers)
    assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers) > 150
    assert len(backend.seen) == 1  # only the normal request reached the backend
