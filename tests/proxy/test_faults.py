"""Failures on the way: retries before the first byte, never after; timeouts; shutdown drains."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx

from kvroute.sim import SimFleet
from kvroute.sse_lines import split_events

from tests.procs import serve_process
from tests.waiting import eventually

from .helpers import (Exchange, base, chat_body, in_flight, raw_post, running_gateway, trickle)

JSON = {"content-type": "application/json"}


def sse_payloads(body: bytes) -> list[str]:
    events, rest = split_events(body)
    return [event.decode().removeprefix("data: ") for event in [*events, rest] if event]


async def test_refused_connections_cost_the_client_nothing() -> None:
    async with SimFleet(instances=2, per_token_delay=0.0) as fleet:
        async with running_gateway(fleet.urls, retry_budget=1.0) as gw, httpx.AsyncClient() as client:
            await fleet.set_fault(1, "crash")  # stops listening: connects are refused
            for stream in (False, True) * 4:
                response = await client.post(base(gw) + "/v1/chat/completions",
                                             content=chat_body(model="sim-model", max_tokens=3, stream=stream),
                                             headers=JSON)
                assert response.status_code == 200
                if stream:
                    assert sse_payloads(response.content)[-1] == "[DONE]"
            assert fleet.instances[0].state()["requests"] == 8
            assert in_flight(gw) == 0


async def test_reset_and_503_before_the_first_byte_are_retried(scripted) -> None:
    async def reset(ex: Exchange) -> None:
        ex.writer.transport.abort()

    async def unavailable(ex: Exchange) -> None:
        await ex.json(503, b'{"error":"busy"}')

    async def fine(ex: Exchange) -> None:
        await ex.json(200, b'{"ok":true}')

    bad_one, bad_two, good = await scripted(reset), await scripted(unavailable), await scripted(fine)
    async with running_gateway([bad_one.url, bad_two.url, good.url], retry_budget=1.0) as gw, \
            httpx.AsyncClient() as client:
        for _ in range(6):
            response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
            assert response.status_code == 200
            assert response.json() == {"ok": True}
        assert len(good.seen) == 6
        assert in_flight(gw) == 0


async def test_attempts_are_bounded_when_every_backend_fails(scripted) -> None:
    async def unavailable(ex: Exchange) -> None:
        await ex.json(503, b'{"error":"busy"}')

    backends = [await scripted(unavailable) for _ in range(4)]
    async with running_gateway([b.url for b in backends], retry_attempts=2, retry_budget=1.0) as gw, \
            httpx.AsyncClient() as client:
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
        assert response.status_code == 503
        assert response.json() == {"error": "busy"}  # the backend's own answer from the last attempt
        assert sum(len(b.seen) for b in backends) == 3
        assert in_flight(gw) == 0


async def test_backend_dying_mid_stream_ends_with_an_error_event_and_no_retry() -> None:
    async with SimFleet(instances=2, per_token_delay=0.02) as fleet:
        async with running_gateway(fleet.urls, debug_headers=True, retry_budget=1.0) as gw, \
                httpx.AsyncClient(timeout=30) as client:
            async with client.stream("POST", base(gw) + "/v1/chat/completions",
                                     content=chat_body(model="sim-model", stream=True, max_tokens=2000),
                                     headers=JSON) as response:
                chosen = response.headers["x-kvroute-backend"]
                index = next(i for i, inst in enumerate(fleet.instances) if inst.url.endswith(chosen))
                received = b""
                async for piece in response.aiter_bytes():
                    received += piece
                    if received.count(b"\n\n") == 3:
                        await fleet.set_fault(index, "crash")
            events = sse_payloads(received)
            error = json.loads(events[-1])["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert "[DONE]" not in events
            assert fleet.instances[1 - index].state()["requests"] == 0  # a half-sent answer is not retried
            assert in_flight(gw) == 0


async def test_hanging_backend_hits_the_first_byte_timeout() -> None:
    async with SimFleet(instances=1, per_token_delay=0.0) as fleet:
        async with running_gateway(fleet.urls, first_byte_timeout=0.3) as gw, httpx.AsyncClient() as client:
            await fleet.set_fault(0, "hang")
            for stream in (False, True):
                response = await client.post(base(gw) + "/v1/chat/completions",
                                             content=chat_body(model="sim-model", stream=stream), headers=JSON)
                assert response.status_code == 504
                assert response.json()["error"]["code"] == "timeout"
            assert in_flight(gw) == 0
            await fleet.set_fault(0, "none")


async def test_idle_gap_mid_stream_ends_with_an_error_event(scripted) -> None:
    async def stall(ex: Exchange) -> None:
        await ex.sse_head()
        await ex.chunk(b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n')
        await ex.until_closed()

    backend = await scripted(stall)
    async with running_gateway([backend.url], idle_timeout=0.3) as gw, httpx.AsyncClient() as client:
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(stream=True), headers=JSON)
        events = sse_payloads(response.content)
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "a"
        assert json.loads(events[-1])["error"]["code"] == "timeout"
        await eventually(lambda: backend.gone.is_set(), "upstream request closed")
        assert in_flight(gw) == 0


async def test_sigterm_drains_a_live_stream_to_completion() -> None:
    async with SimFleet(instances=1, per_token_delay=0.01) as fleet:
        async with serve_process("--backend", fleet.urls[0], "--grace-period", "30") as (process, port, _):
            async with httpx.AsyncClient(timeout=30) as client:
                async with client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                                         content=chat_body(model="sim-model", stream=True, max_tokens=60),
                                         headers=JSON) as response:
                    received = b""
                    async for piece in response.aiter_bytes():
                        if not received:
                            process.send_signal(signal.SIGTERM)
                        received += piece
            events = sse_payloads(received)
            assert events[-1] == "[DONE]"
            assert not any("error" in json.loads(e) for e in events[:-1])
            assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_retry_budget_stops_retries_from_multiplying_an_outage(scripted) -> None:
    async def reset(ex: Exchange) -> None:
        ex.writer.transport.abort()

    bad, good = await scripted(reset), await scripted()
    # No deposits (budget 0): only the reserve of 10 retries; the breaker stays shut so the bad backend keeps
    # getting its share.
    async with running_gateway([bad.url, good.url], retry_budget=0.0, breaker_failures=1000) as gw, \
            httpx.AsyncClient() as client:
        statuses = []
        for _ in range(40):
            response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
            statuses.append(response.status_code)
        assert statuses.count(200) + statuses.count(502) == 40
        assert len(bad.seen) - statuses.count(502) == 10  # exactly the reserve was retried; after it, the 502 stands
        assert statuses.count(502) > 0
        assert in_flight(gw) == 0


async def test_total_timeout_ends_a_long_stream_with_an_error_event(scripted) -> None:
    backend = await scripted(trickle)
    async with running_gateway([backend.url], total_timeout=0.5, idle_timeout=5.0) as gw, \
            httpx.AsyncClient() as client:
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(stream=True), headers=JSON)
        error = json.loads(sse_payloads(response.content)[-1])["error"]
        assert "total_timeout" in error["message"]
        await eventually(lambda: backend.gone.is_set(), "upstream request closed")
        assert in_flight(gw) == 0


async def test_a_response_delimited_by_close_is_complete_not_a_failure(scripted) -> None:
    async def old_style(ex: Exchange) -> None:
        await ex.send(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"ok":true}')
        ex.writer.close()

    backend = await scripted(old_style)
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        for _ in range(2):
            response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
            assert response.status_code == 200
            assert response.json() == {"ok": True}
        assert len(backend.seen) == 2  # no retries: each answer was whole
        assert in_flight(gw) == 0


async def test_streams_still_running_after_the_grace_period_end_with_an_error_event(scripted) -> None:
    backend = await scripted(trickle)
    async with running_gateway([backend.url]) as gw:
        reader, writer = await raw_post(gw.proxy.port, chat_body(stream=True))
        assert b"delta" in await reader.readuntil(b"\n\n")
        await gw.proxy.close(0.2)  # what SIGTERM does, with a short grace period
        rest = await reader.read(-1)
        writer.close()
        assert b'"code": "shutdown"' in rest and rest.endswith(b"0\r\n\r\n")
        await eventually(lambda: backend.gone.is_set(), "upstream request closed")
        assert in_flight(gw) == 0


async def test_a_keep_alive_connection_closed_by_the_backend_is_not_a_failure(scripted) -> None:
    served: dict[int, int] = {}

    async def one_per_connection(ex: Exchange) -> None:
        # Like a server whose keep-alive timeout fired just as the router reused the connection.
        count = served[id(ex.writer)] = served.get(id(ex.writer), 0) + 1
        if count > 1:
            ex.writer.transport.abort()
            return
        await ex.json(200, b'{"ok":true}')

    backend = await scripted(one_per_connection)
    async with running_gateway([backend.url], retry_attempts=0) as gw, httpx.AsyncClient() as client:
        for _ in range(5):
            response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
            assert response.status_code == 200  # sent again on a fresh connection, not a 502
        assert gw.fleet.all()[0].breaker.state.value == "closed"
        assert in_flight(gw) == 0
