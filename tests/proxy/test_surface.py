"""The OpenAI surface of the router: paths, models, health, limits and bad input, headers, priority."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from kvroute.sim import SimFleet

from tests.waiting import eventually

from .helpers import (Exchange, base, chat_body, chat_request, holding, in_flight, raw_exchange,
                      raw_post, running_gateway)

JSON = {"content-type": "application/json"}


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


async def test_models_is_the_union_over_healthy_backends() -> None:
    async with SimFleet(instances=1, model=["a", "b"]) as one, SimFleet(instances=1, model=["b", "c"]) as two:
        async with running_gateway(one.urls + two.urls) as gw, httpx.AsyncClient() as client:
            response = await client.get(base(gw) + "/v1/models")
            assert response.status_code == 200
            listing = response.json()
            assert listing["object"] == "list"
            assert sorted(entry["id"] for entry in listing["data"]) == ["a", "b", "c"]
            assert (await client.get(base(gw) + "/health")).status_code == 200
            assert (await client.get(base(gw) + "/ready")).status_code == 200

            for backend in gw.fleet.all():
                if backend.url in two.urls:
                    backend.liveness.healthy = False
            response = await client.get(base(gw) + "/v1/models")
            assert sorted(entry["id"] for entry in response.json()["data"]) == ["a", "b"]


async def test_not_ready_without_a_healthy_backend(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        gw.fleet.all()[0].liveness.healthy = False
        assert_openai_error(await client.get(base(gw) + "/ready"), 503)
        assert (await client.get(base(gw) + "/health")).status_code == 200


async def test_unknown_model_and_unknown_path_are_404(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        error = assert_openai_error(
            await client.post(base(gw) + "/v1/chat/completions", content=chat_body(model="nope"), headers=JSON), 404)
        assert error["code"] == "model_not_found"
        assert "nope" in error["message"]
        assert_openai_error(await client.post(base(gw) + "/v1/nothing", content=b"{}", headers=JSON), 404)
        assert_openai_error(await client.get(base(gw) + "/v1/chat/completions"), 405)
        assert backend.seen == []


async def test_body_limits_content_type_and_missing_fields(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url], max_body_size=1000) as gw, httpx.AsyncClient() as client:
        big = chat_body("x" * 2000)
        assert_openai_error(await client.post(base(gw) + "/v1/chat/completions", content=big, headers=JSON), 413)

        # Without a length up front (chunked upload) the limit holds as the body arrives.
        async def chunks():
            for _ in range(4):
                yield b"x" * 400

        assert_openai_error(await client.post(base(gw) + "/v1/chat/completions", content=chunks(), headers=JSON), 413)

        error = assert_openai_error(await client.post(base(gw) + "/v1/chat/completions", content=chat_body(),
                                                      headers={"content-type": "text/plain"}), 415)
        assert "application/json" in error["message"]
        assert_openai_error(await client.post(base(gw) + "/v1/chat/completions", content=chat_body()), 415)

        error = assert_openai_error(await client.post(base(gw) + "/v1/completions", content=b'{"model": "m"}',
                                                      headers=JSON), 400)
        assert error["param"] == "prompt"
        error = assert_openai_error(await client.post(base(gw) + "/v1/chat/completions",
                                                      content=b'{"model": "m", "messages": "hi"}', headers=JSON), 400)
        assert error["param"] == "messages"
        assert backend.seen == []


async def test_a_413_is_sent_before_the_body_is_read(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url], max_body_size=1000) as gw:
        raw = await raw_exchange(gw.proxy.port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                                                 b"content-type: application/json\r\ncontent-length: 5000000\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 413 ")
        assert b"connection: close" in raw


async def test_request_id_round_trips_and_trace_context_passes(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(),
                                     headers={**JSON, "x-request-id": "req-42", "traceparent": trace})
        assert response.headers["x-request-id"] == "req-42"
        assert backend.seen[-1].headers["x-request-id"] == "req-42"
        assert backend.seen[-1].headers["traceparent"] == trace
        assert "x-kvroute-backend" not in response.headers  # debug headers are off by default

        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
        generated = response.headers["x-request-id"]
        assert generated and backend.seen[-1].headers["x-request-id"] == generated

        error = await client.post(base(gw) + "/v1/chat/completions", content=b"{", headers={**JSON, "x-request-id": "bad-1"})
        assert error.headers["x-request-id"] == "bad-1"


async def test_api_key_is_not_forwarded_unless_configured(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        await client.post(base(gw) + "/v1/chat/completions", content=chat_body(),
                          headers={**JSON, "authorization": "Bearer secret"})
        assert "authorization" not in backend.seen[-1].headers
    async with running_gateway([backend.url], forward_api_key=True) as gw, httpx.AsyncClient() as client:
        await client.post(base(gw) + "/v1/chat/completions", content=chat_body(),
                          headers={**JSON, "authorization": "Bearer secret"})
        assert backend.seen[-1].headers["authorization"] == "Bearer secret"


async def test_debug_headers_name_backend_and_branch(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url], debug_headers=True) as gw, httpx.AsyncClient() as client:
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
        assert response.headers["x-kvroute-backend"] == gw.fleet.all()[0].id
        assert response.headers["x-kvroute-branch"]
        # The cost model's prediction: positive, in milliseconds (its priors put it near 100 ms).
        assert 1.0 < float(response.headers["x-kvroute-predicted-ttft-ms"]) < 10_000.0
        assert gw.observer.totals()["requests_total"] == 1  # the admin API's metrics saw it


async def test_embeddings_and_responses_are_passed_through(scripted) -> None:
    async def answer(ex: Exchange) -> None:
        await ex.json(200, json.dumps({"path": ex.request.path}).encode())

    backend = await scripted(answer)
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        response = await client.post(base(gw) + "/v1/embeddings", content=b'{"model":"m","input":"hello"}',
                                     headers=JSON)
        assert response.json() == {"path": "/v1/embeddings"}
        response = await client.post(base(gw) + "/v1/responses", content=b'{"model":"m","input":"hello"}',
                                     headers=JSON)
        assert response.json() == {"path": "/v1/responses"}
        assert in_flight(gw) == 0


@pytest.mark.parametrize("how", ["header", "api_key"])
async def test_overload_sheds_with_429_while_high_priority_succeeds(scripted, how: str) -> None:
    hold = asyncio.Event()
    backend = await scripted(holding(hold))
    high = {"x-priority": "high"} if how == "header" else {"authorization": "Bearer gold"}
    async with running_gateway([backend.url], queue_threshold_normal=1, queue_threshold_low=1,
                               api_key_tiers={"gold": "high"}) as gw, httpx.AsyncClient() as client:
        url = base(gw) + "/v1/chat/completions"
        held = asyncio.ensure_future(client.post(url, content=chat_body("hold"), headers=JSON))
        await eventually(lambda: bool(backend.seen), "the held request reached the backend")
        for tier in ("normal", "low"):
            response = await client.post(url, content=chat_body(), headers={**JSON, "x-priority": tier})
            error = assert_openai_error(response, 429)
            assert tier in error["message"]
            assert int(response.headers["retry-after"]) >= 1
        response = await client.post(url, content=chat_body(), headers={**JSON, **high})
        assert response.status_code == 200
        hold.set()
        assert (await held).status_code == 200
        assert_openai_error(await client.post(url, content=chat_body(), headers={**JSON, "x-priority": "urgent"}), 400)
        assert in_flight(gw) == 0


async def test_queued_request_waits_for_a_slot_then_runs(scripted) -> None:
    hold = asyncio.Event()
    backend = await scripted(holding(hold))
    async with running_gateway([backend.url], queue_threshold_normal=1, wait_queue_size=8) as gw, \
            httpx.AsyncClient() as client:
        url = base(gw) + "/v1/chat/completions"
        held = asyncio.ensure_future(client.post(url, content=chat_body("hold"), headers=JSON))
        await eventually(lambda: bool(backend.seen), "the held request reached the backend")
        queued = asyncio.ensure_future(client.post(url, content=chat_body("after"), headers=JSON))
        await eventually(lambda: bool(gw.proxy.dispatcher.waiters), "a request queued in the router")
        assert len(backend.seen) == 1  # still waiting in the router
        hold.set()
        assert (await held).status_code == 200
        assert (await queued).status_code == 200
        assert len(backend.seen) == 2
        assert in_flight(gw) == 0


async def test_waiting_past_the_tier_limit_is_503(scripted) -> None:
    hold = asyncio.Event()

    async def answer(ex: Exchange) -> None:
        await hold.wait()
        await ex.json(200, b'{"ok":true}')

    backend = await scripted(answer)
    async with running_gateway([backend.url], queue_threshold_normal=1, wait_queue_size=8,
                               queue_timeout=0.3) as gw, httpx.AsyncClient() as client:
        url = base(gw) + "/v1/chat/completions"
        held = asyncio.ensure_future(client.post(url, content=chat_body("hold"), headers=JSON))
        await eventually(lambda: bool(backend.seen), "the held request reached the backend")
        error = assert_openai_error(await client.post(url, content=chat_body(), headers=JSON), 503)
        assert error["code"] == "queue_timeout"
        hold.set()
        await held
        assert gw.router.snapshot() is not None
        assert not gw.proxy.dispatcher.waiters


async def test_pipelined_requests_are_answered_in_order_and_100_continue_is_sent(scripted) -> None:
    async def echo(ex: Exchange) -> None:
        await ex.json(200, ex.request.body)

    backend = await scripted(echo)
    async with running_gateway([backend.url]) as gw:
        one, two = chat_body("one"), chat_body("two")
        reader, writer = await raw_post(gw.proxy.port, one)
        writer.write(chat_request(two))
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(two):
            received += await reader.read(65536)
        assert received.index(one) < received.index(two)

        writer.write(chat_request(one).replace(b"\r\n\r\n", b"\r\nexpect: 100-continue\r\n\r\n").removesuffix(one))
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(one)
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        assert in_flight(gw) == 0


async def test_http10_client_gets_a_close_delimited_stream(scripted) -> None:
    events = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\n'

    async def stream(ex: Exchange) -> None:
        await ex.sse_head()
        await ex.chunk(events)
        await ex.end()

    backend = await scripted(stream)
    async with running_gateway([backend.url]) as gw:
        reader, writer = await raw_post(gw.proxy.port, chat_body(stream=True), version=b"1.0")
        raw = await reader.read(-1)  # until the router closes: that is the end of this body
        writer.close()
        head, _, received = raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head.lower()
        assert received == events
        assert in_flight(gw) == 0


async def test_idle_keep_alive_connections_are_closed(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url], keepalive_timeout=0.2) as gw:
        reader, writer = await raw_post(gw.proxy.port, chat_body())
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        await reader.read(-1)  # returns once the router closes the idle connection
        writer.close()
        await eventually(lambda: not gw.proxy.connections, "the router forgot the connection")


async def test_a_request_not_received_whole_in_time_gets_408(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url], request_read_timeout=0.2) as gw:
        body = chat_body()
        # Headers and half the body, then nothing: a client trickling (or stuck) mid-request.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy.port)
        writer.write(chat_request(body)[: -len(body) // 2])
        raw = await reader.read(-1)  # until the router closes
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), raw
        assert json.loads(payload)["error"]["code"] == "request_timeout"
        assert [s for s in backend.seen if s.path != "/v1/models"] == []  # nothing half-read went upstream
        await eventually(lambda: not gw.proxy.connections, "the router forgot the connection")


async def test_request_read_deadline_spares_slow_senders_and_idle_connections(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url], request_read_timeout=2.0, keepalive_timeout=30.0) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy.port)
        request = chat_request(chat_body())
        for piece in (request[:40], request[40:-10], request[-10:]):  # slow, but whole within the deadline
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.1)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        await reader.readexactly(length)
        # Idle between requests for longer than request_read_timeout: that is keep-alive, not a slow request.
        await asyncio.sleep(2.5)
        writer.write(request)
        await writer.drain()
        status = await reader.readuntil(b"\r\n")
        writer.close()
        assert status.startswith(b"HTTP/1.1 200"), status
