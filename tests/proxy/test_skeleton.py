"""The walking skeleton's data-plane checks (issue 2): relay exactness, routing policies, bad input, disconnects."""

from __future__ import annotations

import asyncio
import json
import re

import httpx

from kvroute.sim import SimFleet

from tests.waiting import eventually

from .helpers import Exchange, base, chat_body, in_flight, raw_post, running_gateway

SSE_EVENTS = [
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"content":" \\u00e9\\n\\n world"},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n',
]
USAGE_EVENT = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
               b'"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}\n\n')
DONE = b"data: [DONE]\n\n"


async def vllm_like_stream(ex: Exchange) -> None:
    """Like vLLM: the usage event only when the request asked for it; events split across writes."""
    asked = json.loads(ex.request.body).get("stream_options", {}).get("include_usage", False)
    await ex.sse_head()
    for event in SSE_EVENTS:
        await ex.chunk(event[:20])
        await ex.chunk(event[20:])
    if asked:
        await ex.chunk(USAGE_EVENT)
    await ex.chunk(DONE)
    await ex.end()


async def test_streamed_chat_arrives_byte_for_byte(scripted) -> None:
    backend = await scripted(vllm_like_stream)
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        async with client.stream("POST", base(gw) + "/v1/chat/completions", content=chat_body(stream=True),
                                 headers={"content-type": "application/json"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            body = await response.aread()
        assert body == b"".join(SSE_EVENTS) + DONE
        # The router asked for usage on the client's behalf and dropped that event again.
        assert json.loads(backend.seen[0].body)["stream_options"] == {"include_usage": True}

        async with client.stream("POST", base(gw) + "/v1/chat/completions",
                                 content=chat_body(stream=True, stream_options={"include_usage": True}),
                                 headers={"content-type": "application/json"}) as response:
            body = await response.aread()
        assert body == b"".join(SSE_EVENTS) + USAGE_EVENT + DONE
        assert in_flight(gw) == 0
        assert gw.observer.totals()["ttft_count"] == 2  # first content seen in both streams, reported as TTFT


async def test_non_streamed_returns_backend_json(scripted) -> None:
    payload = b'{"id":"cmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",' \
              b'"content":"ok"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'

    async def answer(ex: Exchange) -> None:
        await ex.json(200, payload, b"x-backend-header: kept\r\n")

    backend = await scripted(answer)
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        response = await client.post(base(gw) + "/v1/chat/completions", content=chat_body(),
                                     headers={"content-type": "application/json"})
        assert response.status_code == 200
        assert response.content == payload
        assert response.headers["x-backend-header"] == "kept"
        assert backend.seen[0].body == chat_body()  # non-streamed bodies go upstream untouched
        assert in_flight(gw) == 0


async def test_round_robin_uses_both_backends() -> None:
    async with SimFleet(instances=2, per_token_delay=0.0) as fleet:
        async with running_gateway(fleet.urls, policy="round_robin") as gw, \
                httpx.AsyncClient() as client:
            for _ in range(6):
                response = await client.post(base(gw) + "/v1/chat/completions",
                                             content=chat_body(model="sim-model", max_tokens=2),
                                             headers={"content-type": "application/json"})
                assert response.status_code == 200
        counts = [instance.state()["requests"] for instance in fleet.instances]
        assert all(count > 0 for count in counts), counts


async def open_stream(port: int, body: bytes) -> tuple[asyncio.StreamWriter, bytes]:
    """Start a streamed request on a raw connection and read until tokens flow; returns what came so far."""
    reader, writer = await raw_post(port, body)
    received = b""
    while b'"content":"' not in received.replace(b'"content":""', b""):
        received += await reader.read(65536)
    return writer, received


async def test_least_inflight_picks_the_idle_backend() -> None:
    async with SimFleet(instances=2, per_token_delay=0.02) as fleet:
        async with running_gateway(fleet.urls, policy="least_inflight", debug_headers=True) as gw, \
                httpx.AsyncClient(timeout=30) as client:
            writer, head = await open_stream(gw.proxy.port, chat_body(model="sim-model", stream=True, max_tokens=2000))
            busy = re.search(rb"x-kvroute-backend: ([^\r]+)", head).group(1).decode()  # type: ignore[union-attr]
            for _ in range(3):
                response = await client.post(base(gw) + "/v1/chat/completions",
                                             content=chat_body(model="sim-model", max_tokens=1),
                                             headers={"content-type": "application/json"})
                assert response.status_code == 200
                assert response.headers["x-kvroute-backend"] != busy
            writer.close()
            await eventually(lambda: in_flight(gw) == 0, "the long stream released")


async def test_malformed_body_is_400_and_reaches_no_backend(scripted) -> None:
    backend = await scripted()
    async with running_gateway([backend.url]) as gw, httpx.AsyncClient() as client:
        for body in (b"{not json", b"[1, 2]", b'{"messages": [{"role": "user", "content": "x"}]}'):
            response = await client.post(base(gw) + "/v1/chat/completions", content=body,
                                         headers={"content-type": "application/json"})
            assert response.status_code == 400, body
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"
        response = await client.post(base(gw) + "/v1/chat/completions", content=b'{"messages": []}',
                                     headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "model"
        assert backend.seen == []


async def test_client_disconnect_mid_stream_leaves_nothing_in_flight() -> None:
    async with SimFleet(instances=1, per_token_delay=0.02) as fleet:
        async with running_gateway(fleet.urls) as gw:
            writer, _ = await open_stream(gw.proxy.port, chat_body(model="sim-model", stream=True, max_tokens=2000))
            assert in_flight(gw) == 1
            assert fleet.instances[0].state()["running"] == 1
            writer.close()
            await eventually(lambda: in_flight(gw) == 0, "in-flight back to zero")
            # The upstream request was closed, so the engine aborted it.
            await eventually(lambda: fleet.instances[0].state()["running"] == 0, "backend aborted the request")


async def test_client_disconnect_before_any_byte_closes_the_upstream_request() -> None:
    async with SimFleet(instances=1, per_token_delay=0.02) as fleet:
        async with running_gateway(fleet.urls) as gw:
            # Not streamed: nothing comes back for 40 s.
            _, writer = await raw_post(gw.proxy.port, chat_body(model="sim-model", max_tokens=2000))
            await eventually(lambda: fleet.instances[0].state()["running"] == 1, "the backend is generating")
            writer.close()
            await eventually(lambda: in_flight(gw) == 0, "in-flight back to zero")
            await eventually(lambda: fleet.instances[0].state()["running"] == 0, "backend aborted the request")
