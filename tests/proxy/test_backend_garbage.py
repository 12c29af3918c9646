"""Backends that answer garbage (responses, streams, /metrics pages): the router stays up, the client
gets a clean error or a correctly terminated stream, and the backend is marked as failing."""

from __future__ import annotations

import asyncio
import json

import httpx

from bench.procs import free_port
from kvroute.proxy.sse import MAX_EVENT_BYTES
from kvroute.proxy.upstream import FETCH_LIMIT
from kvroute.sse_lines import split_events

from . import helpers
from .helpers import Exchange, base, chat_body, in_flight, running_gateway

JSON = {"content-type": "application/json"}
CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'


async def not_http(ex: Exchange) -> None:
    await ex.send(b"SPAM SPAM SPAM\r\n\r\nand more spam")
    ex.writer.close()


async def truncated(ex: Exchange) -> None:
    await ex.sse_head()
    await ex.chunk(CONTENT)
    await ex.chunk(b'data: {"choices":[{"index":0,"delta":{"cont')  # the connection ends inside an event
    ex.writer.close()


def endless_event(after_content: bool):
    async def script(ex: Exchange) -> None:
        await ex.sse_head()
        if after_content:
            await ex.chunk(CONTENT)
        try:
            while True:  # no event boundary, ever
                await ex.chunk(b"data: " + b"x" * 65536)
        except ConnectionError:
            ex.backend.gone.set()
    return script


def events(body: bytes) -> list[bytes]:
    frames, rest = split_events(body)
    assert rest == b"", body[-200:]
    return frames


async def test_a_backend_that_is_not_http_gets_a_502_and_is_reported(scripted) -> None:
    bad = await scripted(not_http)
    async with running_gateway([bad.url]) as gw, httpx.AsyncClient() as client:
        for stream in (False, True):
            response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(stream=stream),
                                         headers=JSON)
            assert response.status_code == 502
            error = response.json()["error"]
            assert error["code"] == "bad_gateway" and "invalid HTTP" in error["message"]
        assert in_flight(gw) == 0


async def test_a_stream_cut_inside_an_event_ends_with_an_error_event(scripted) -> None:
    backend = await scripted(truncated)
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(stream=True), headers=JSON)
        frames = events(response.content)
        assert frames[0] == CONTENT.rstrip(b"\n")
        assert json.loads(frames[-1].removeprefix(b"data: "))["error"]["code"] == "backend_error"
        assert in_flight(gw) == 0


async def test_an_endless_event_before_any_content_is_retried_on_a_good_backend(scripted) -> None:
    bad = await scripted(endless_event(after_content=False))

    async def fine(ex: Exchange) -> None:
        await ex.sse_head()
        await ex.chunk(CONTENT + b"data: [DONE]\n\n")
        await ex.end()

    good = await scripted(fine)
    async with running_gateway([bad.url, good.url], retry_budget=1.0) as gw, httpx.AsyncClient(timeout=60) as client:
        for _ in range(2):  # round robin: one of the two starts on the bad backend
            response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(stream=True),
                                         headers=JSON)
            assert response.status_code == 200
            assert events(response.content)[-1] == b"data: [DONE]"
        await asyncio.wait_for(bad.gone.wait(), 30)  # the router hung up on it
        assert len(bad.seen) >= 1 and len(good.seen) == 2  # every request that met it was retried
        assert in_flight(gw) == 0


async def test_an_endless_event_mid_stream_is_cut_with_an_error_event(scripted) -> None:
    bad = await scripted(endless_event(after_content=True))
    async with running_gateway([bad.url]) as gw, httpx.AsyncClient(timeout=60) as client:
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(stream=True), headers=JSON)
        frames = events(response.content)
        assert frames[0] == CONTENT.rstrip(b"\n")
        error = json.loads(frames[-1].removeprefix(b"data: "))["error"]
        assert error["code"] == "backend_error" and f"{MAX_EVENT_BYTES >> 20} MiB" in error["message"]
        # Bounded: the router held at most one oversized event, not the whole endless stream.
        assert len(response.content) < 2 * MAX_EVENT_BYTES
        await asyncio.wait_for(bad.gone.wait(), 30)
        assert in_flight(gw) == 0


def ends_cleanly_without_done(content: bool):
    """A server stopping: its response is closed properly (last chunk) before the stream is done."""
    async def script(ex: Exchange) -> None:
        await ex.sse_head()
        await ex.chunk(ROLE + (CONTENT if content else b""))
        await asyncio.sleep(0.2)  # what was sent reaches the client first (else it is retried whole)
        await ex.end()
    return script


ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'


async def test_a_stream_closed_cleanly_without_done_ends_with_an_error_event(scripted) -> None:
    backend = await scripted(ends_cleanly_without_done(content=True))
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(stream=True), headers=JSON)
        frames = events(response.content)
        assert frames[:2] == [ROLE.rstrip(b"\n"), CONTENT.rstrip(b"\n")]
        error = json.loads(frames[-1].removeprefix(b"data: "))["error"]
        assert error["code"] == "backend_error" and "without [DONE]" in error["message"]
        assert polled(gw, backend).breaker.failures == 1  # type: ignore[attr-defined]
        assert in_flight(gw) == 0


async def test_a_stream_closed_without_done_before_any_content_is_retried(scripted) -> None:
    bad = await scripted(ends_cleanly_without_done(content=False))

    async def fine(ex: Exchange) -> None:
        await ex.sse_head()
        await ex.chunk(ROLE + CONTENT + b"data: [DONE]\n\n")
        await ex.end()

    good = await scripted(fine)
    async with running_gateway([bad.url, good.url], retry_budget=1.0) as gw, httpx.AsyncClient() as client:
        for _ in range(2):  # round robin: one of the two starts on the bad backend
            response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(stream=True),
                                         headers=JSON)
            assert response.status_code == 200
            assert events(response.content) == [ROLE.rstrip(b"\n"), CONTENT.rstrip(b"\n"), b"data: [DONE]"]
        assert len(bad.seen) >= 1 and len(good.seen) == 2  # every request that met it was retried
        assert in_flight(gw) == 0


def polled(gw, backend) -> object:
    state = gw.fleet.get(f"127.0.0.1:{backend.port}")
    assert state is not None
    return state


async def test_a_100_mb_metrics_page_fails_the_poll_at_the_fetch_limit(scripted, monkeypatch) -> None:
    line = b"vllm:num_requests_waiting 1\n"
    monkeypatch.setattr(helpers, "METRICS_PAGE", line * ((100 << 20) // len(line)))
    backend = await scripted()
    async with running_gateway([backend.url], poll_timeout=30.0) as gw:
        state = polled(gw, backend)
        assert "too_large" in state.last_error and f"{FETCH_LIMIT >> 20} MiB" in state.last_error
        assert state.metrics is None


async def test_a_page_just_under_the_fetch_limit_is_read_whole(scripted, monkeypatch) -> None:
    # Over the data plane's 1 MiB back-pressure mark: a body read whole must not stall on it.
    line = b"vllm:num_requests_waiting 1\n"
    monkeypatch.setattr(helpers, "METRICS_PAGE", line * ((3 << 20) // len(line)))
    backend = await scripted()
    async with running_gateway([backend.url], poll_timeout=30.0) as gw:
        state = polled(gw, backend)
        assert state.last_error == "" and state.metrics is not None


async def test_hostile_label_values_are_a_parse_error_not_a_crash(scripted, monkeypatch) -> None:
    page = (b'vllm:num_requests_waiting{model_name="a\\"},b=\\"\n\x00\xff' + b"z" * 100_000 + b'"} 5\n'
            b'vllm:num_requests_running{a="' + b"\xff\xfe" * 1000 + b'"} NaN\n')
    monkeypatch.setattr(helpers, "METRICS_PAGE", page)
    backend = await scripted()
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        assert polled(gw, backend).last_error.startswith("parse")
        # The router is up and answers (the backend's health is the poller's business).
        assert (await client.get(base(gw) + "/v1/models")).status_code in (200, 503)


async def test_models_stays_200_beside_a_dead_backend_and_ones_whose_model_list_lies(scripted) -> None:
    good = await scripted()  # serves "m"
    garbled = await scripted()
    garbled.models_page = b'{"object": "list", "data": "not a list"}'

    async def no_such_model(ex: Exchange) -> None:
        await ex.json(404, b'{"error": {"message": "The model `ghost` does not exist.", "type": "NotFoundError", '
                           b'"param": null, "code": 404}}')

    liar = await scripted(no_such_model, models=["ghost"])  # lists a model it then says it does not have
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running_gateway([good.url, garbled.url, liar.url, dead]) as gw, httpx.AsyncClient() as client:
        listing = await client.get(base(gw) + "/v1/models")
        assert listing.status_code == 200
        assert sorted(entry["id"] for entry in listing.json()["data"]) == ["ghost", "m"]
        assert not polled(gw, garbled).healthy and "/v1/models" in polled(gw, garbled).last_error
        for _ in range(4):  # only the good backend serves "m"
            response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(), headers=JSON)
            assert response.status_code == 200
        ghost = await client.post(base(gw) + "/v1/chat/completions", headers=JSON,
                                  content=chat_body(model="ghost"))
        assert ghost.status_code == 404 and "ghost" in ghost.json()["error"]["message"]  # its own answer, relayed
        assert len(good.seen) == 4 and garbled.seen == [] and len(liar.seen) == 1
        assert in_flight(gw) == 0
