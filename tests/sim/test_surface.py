"""The simulator's OpenAI/vLLM HTTP surface, through real sockets."""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import pytest

from kvroute.sim import SimFleet

from tests.procs import sim_process

from .helpers import metric, parse_metrics, sse_events

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "Say something nice."}]}


async def test_models_health_and_metrics(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=2, per_token_delay=0.001, model=["sim-model", "alias"]) as fleet:
        assert len(set(fleet.urls)) == 2
        for url in fleet.urls:
            async with http.get(url + "/health") as r:
                assert r.status == 200
            async with http.get(url + "/v1/models") as r:
                body = await r.json()
                assert [m["id"] for m in body["data"]] == ["sim-model", "alias"]
                assert body["data"][0]["owned_by"] == "vllm"
            async with http.get(url + "/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                m = parse_metrics(await r.text())
            labels = {"model_name": "sim-model", "engine": "0"}
            assert metric(m, "vllm:num_requests_running", **labels) == 0
            assert metric(m, "vllm:num_requests_waiting", **labels) == 0
            assert metric(m, "vllm:kv_cache_usage_perc", **labels) == 0
            assert metric(m, "vllm:prefix_cache_queries_total", **labels) == 0
            assert metric(m, "vllm:cache_config_info", block_size="16", enable_prefix_caching="True") == 1.0


async def test_chat_non_streamed(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        async with http.post(fleet.urls[0] + "/v1/chat/completions", json={**CHAT, "max_tokens": 7}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["object"] == "chat.completion"
        assert body["id"].startswith("chatcmpl-")
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 7
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 7
        assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        # The default tokenizer: each generated word is one token.
        assert len(choice["message"]["content"].split()) == 7


async def test_chat_streamed_with_usage(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        req = {**CHAT, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(fleet.urls[0] + "/v1/chat/completions", json=req) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = await sse_events(r)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        usage = chunks[-1]
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
        content = [c for c in chunks[1:-1]]
        assert content[-1]["choices"][0]["finish_reason"] == "length"
        assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
        text = "".join(c["choices"][0]["delta"]["content"] for c in content)
        # Same seed, same prompt: the non-streamed answer is the same text.
        async with http.post(fleet.urls[0] + "/v1/chat/completions", json={**CHAT, "max_tokens": 5}) as r:
            assert (await r.json())["choices"][0]["message"]["content"] == text


async def test_completions_streamed_and_not(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        url = fleet.urls[0] + "/v1/completions"
        async with http.post(url, json={"model": "sim-model", "prompt": "Once upon a time", "max_tokens": 4,
                                        "stream": True}) as r:
            events = await sse_events(r)
        assert events[-1] == "[DONE]"
        assert all(e["object"] == "text_completion" for e in events[:-1])
        assert "usage" not in events[-2]
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        text = "".join(e["choices"][0]["text"] for e in events[:-1])
        async with http.post(url, json={"model": "sim-model", "prompt": "Once upon a time", "max_tokens": 4}) as r:
            body = await r.json()
        assert body["choices"][0]["text"] == text
        assert body["usage"]["completion_tokens"] == 4
        # Without max_tokens the simulated model "stops" after --default-max-tokens tokens.
        async with http.post(url, json={"prompt": [1, 2, 3]}) as r:
            body = await r.json()
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 131, "completion_tokens": 128,
                                 "prompt_tokens_details": {"cached_tokens": 0}}


@pytest.mark.parametrize(
    "path,body,status,param",
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None),
        ("/v1/chat/completions", b'{"model": "sim-model"}', 400, "messages"),
        ("/v1/chat/completions", b'{"messages": [{"content": "x"}]}', 400, "messages"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400, "max_tokens"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stream_options": {}}', 400,
         "stream_options"),
        ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        ("/v1/completions", b'{"prompt": ""}', 400, "prompt"),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 40000}', 400, "max_tokens"),
    ],
)
async def test_bad_requests(http: aiohttp.ClientSession, path: str, body: bytes, status: int, param: str | None) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        async with http.post(fleet.urls[0] + path, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == status
            err = (await r.json())["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == status and err["param"] == param and err["message"]
        assert fleet.instances[0].engine.stats.requests == 0


async def test_per_token_delay_paces_tokens() -> None:
    # 20 tokens at 20 ms per step take at least 0.4 s of simulated time (the clock is the
    # engine's, so this is behaviour, not a wall-clock assertion).
    async with SimFleet(instances=1, per_token_delay=0.02) as fleet:
        eng = fleet.instances[0].engine
        req = eng.add_request(list(range(10)), 20)
        while req.finished_at is None:
            await req.event.wait()
            req.event.clear()
        assert req.finished_at - req.arrival == pytest.approx(0.02 * 20, rel=0.05)
        assert req.first_token_at - req.arrival == pytest.approx(0.02, rel=0.05)


def test_threaded_fleet_and_cli_module() -> None:
    import httpx

    with SimFleet(instances=2, per_token_delay=0.001).start_in_thread() as tf:
        r = httpx.post(tf.urls[1] + "/v1/chat/completions", json={**CHAT, "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        tf.set_fault(1, "error_rate", 1.0)
        assert httpx.post(tf.urls[1] + "/v1/chat/completions", json=CHAT).status_code == 500
        assert tf.state(1)["faults"]["error_rate"] == 1.0
    # cli.main parses flags and rejects nonsense with exit code 2 before serving.
    out = subprocess.run([sys.executable, "-c", "import sys; from kvroute.sim.cli import main; "
                          "sys.exit(main(['--instances', '1', '--profile', 'nope']))"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown profile" in out.stderr


async def test_cli_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    async with sim_process("--instances", "2", "--base-port", "0", "--per-token-delay", "0.001",
                           "--num-gpu-blocks", "64", "--fault", "1:error_rate:1") as (_, info):
        assert info["num_gpu_blocks"] == 64 and len(info["urls"]) == 2
        async with http.post(info["urls"][0] + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}) as r:
            assert r.status == 200
        async with http.post(info["urls"][1] + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}) as r:
            assert r.status == 500


async def test_eos_probability_and_ignore_eos(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.0005, eos_probability=0.2) as fleet:
        url = fleet.urls[0] + "/v1/completions"
        lengths, reasons = [], set()
        for i in range(30):
            async with http.post(url, json={"prompt": f"p{i}", "max_tokens": 40}) as r:
                body = await r.json()
            lengths.append(body["usage"]["completion_tokens"])
            reasons.add(body["choices"][0]["finish_reason"])
        assert "stop" in reasons and min(lengths) >= 1 and max(lengths) <= 40
        assert sum(lengths) / len(lengths) < 10  # mean of a geometric(0.2) capped at 40 is ~5
        async with http.post(url, json={"prompt": "p0", "max_tokens": 40, "ignore_eos": True}) as r:
            body = await r.json()
        assert body["usage"]["completion_tokens"] == 40 and body["choices"][0]["finish_reason"] == "length"
        async with http.post(url, json={"prompt": "p0", "max_tokens": 40}) as r:
            assert (await r.json())["usage"]["completion_tokens"] == lengths[0]  # deterministic
