"""The load generator against a small real SSE server that answers like vLLM's OpenAI surface."""

from __future__ import annotations

import json
from typing import AsyncIterator

import pytest
from aiohttp import web

from kvroute.loadgen import (
    RequestSpec,
    Result,
    calibration,
    percentile,
    poisson_arrivals,
    run_closed_loop,
    run_open_loop,
    summarize,
)


BODIES = web.AppKey("bodies", list)


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("model") == "missing":
        return web.json_response(
            {"error": {"message": "model missing not found", "type": "NotFoundError", "param": "model", "code": 404}},
            status=404,
        )
    request.app[BODIES].append(body)
    tokens = int(body.get("max_tokens", 3))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-kvroute-backend": "b1",
                                              "x-kvroute-branch": "cost:cache_affinity",
                                              "x-kvroute-predicted-ttft-ms": "2.5"})
    await resp.prepare(request)

    async def send(obj: object) -> None:
        await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

    # vLLM's first chunk carries only the role: it must not count as the first token.
    await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for i in range(tokens):
        await send({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]})
    if body.get("stream_options", {}).get("include_usage"):
        await send({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": tokens,
                                             "total_tokens": 40 + tokens,
                                             "prompt_tokens_details": {"cached_tokens": 32}}})
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _completions(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n')
    await resp.write(b'data: {"choices": [{"index": 0, "text": "b"}]}\n\n')
    await resp.write(b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}\n\n')
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, web.Application]]:
    app = web.Application()
    app[BODIES] = []
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


def _chat_spec(max_tokens: int = 3, model: str = "m", tag: str = "") -> RequestSpec:
    return RequestSpec("chat", {"model": model, "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": max_tokens}, tag=tag)


async def test_closed_loop_reads_tokens_usage_and_backend(server: tuple[str, web.Application]) -> None:
    url, app = server
    seen: list[Result] = []
    results = await run_closed_loop(url, [_chat_spec(tag=f"r{i}") for i in range(5)], concurrency=2,
                                    progress=seen.append)
    assert len(seen) == 5
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.tag for r in results] == [f"r{i}" for i in range(5)]
    for r in results:
        assert r.ok and r.status == 200 and r.error is None
        assert r.completion_tokens == 3 and r.prompt_tokens == 40 and r.cached_tokens == 32
        assert r.backend == "b1" and r.branch == "cost:cache_affinity" and r.predicted_ttft_s == 0.0025
        assert r.ttft_s is not None and len(r.itl_s) == 2
        assert r.e2e_s is not None and r.e2e_s >= r.ttft_s
    # Usage is always asked for, whatever the workload's body said.
    assert all(b["stream"] is True and b["stream_options"]["include_usage"] for b in app[BODIES])
    summary = summarize(results)
    assert summary["ok"] == 5 and summary["errors"] == 0
    assert summary["cache_hit_rate"] == pytest.approx(32 / 40)
    assert summary["completion_tokens"] == 15
    assert summary["backends"] == {"b1": 5}


async def test_connection_per_request(server: tuple[str, web.Application]) -> None:
    url, _ = server
    results = await run_closed_loop(url, [_chat_spec() for _ in range(3)], concurrency=2, keepalive=False)
    assert all(r.ok and r.completion_tokens == 3 for r in results)


async def test_errors_are_results_not_exceptions(server: tuple[str, web.Application]) -> None:
    url, _ = server
    results = await run_closed_loop(url, [_chat_spec(model="missing"), _chat_spec()], concurrency=1)
    assert not results[0].ok and results[0].status == 404
    assert "model missing not found" in (results[0].error or "")
    assert results[1].ok
    dead = await run_closed_loop("http://127.0.0.1:1", [_chat_spec()], concurrency=1)
    assert not dead[0].ok and dead[0].status == 0 and dead[0].error


async def test_completions_endpoint(server: tuple[str, web.Application]) -> None:
    url, _ = server
    results = await run_closed_loop(url, [RequestSpec("completions", {"model": "m", "prompt": "x"})], 1)
    assert results[0].ok and results[0].completion_tokens == 2 and results[0].cached_tokens is None
    assert results[0].ttft_s is not None and len(results[0].itl_s) == 1


async def test_open_loop_with_timestamps_and_rate(server: tuple[str, web.Application]) -> None:
    url, _ = server
    specs = [_chat_spec() for _ in range(4)]
    # Trace timestamps in fleet seconds, compressed 100x on the wall clock.
    results = await run_open_loop(url, specs, [0.0, 1.0, 2.0, 3.0], time_scale=100.0)
    assert all(r.ok for r in results)
    assert [round(r.start_s, 2) for r in results] == [0.0, 0.01, 0.02, 0.03]
    results = await run_open_loop(url, specs, 1000.0, time_scale=1.0, seed=3)
    assert all(r.ok for r in results)


def test_percentile_and_arrivals() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([float(i) for i in range(101)], 99) == pytest.approx(99.0)
    a = poisson_arrivals(100, 10.0, seed=1)
    assert a == poisson_arrivals(100, 10.0, seed=1)
    assert a == sorted(a) and 5.0 < a[-1] < 20.0


def test_calibration_sets_measured_against_predicted_ttft() -> None:
    def done(ttft: float, predicted: float | None, branch: str = "cost:cache_affinity", ok: bool = True) -> Result:
        return Result(index=0, ok=ok, ttft_s=ttft, predicted_ttft_s=predicted, branch=branch)

    results = [done(0.1, 0.1), done(0.3, 0.1), done(0.2, 0.1, "cost:load_spread"),
               done(0.5, None), done(9.0, 0.1, ok=False)]
    cal = calibration(results)
    # Only answered requests with a prediction count: measured / predicted = 1, 3 and 2.
    assert cal["requests"] == 3 and cal["ratio_p50"] == pytest.approx(2.0)
    assert cal["ratio_p10"] == pytest.approx(1.2) and cal["ratio_p90"] == pytest.approx(2.8)
    assert cal["by_branch"]["cost:load_spread"] == {"requests": 1, "ratio_p10": pytest.approx(2.0),
                                                    "ratio_p50": pytest.approx(2.0), "ratio_p90": pytest.approx(2.0)}
    assert cal["by_branch"]["cost:cache_affinity"]["ratio_p50"] == pytest.approx(2.0)
    # A gateway that sends no prediction (every peer) has none.
    assert calibration([done(0.1, None)]) == {}
