"""Timing behaviour on the simulated clock: cached prefill is cheap, throughput saturates,
queues grow. Comparisons between runs, never wall-clock thresholds."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from kvroute.sim import SimFleet, load_profile
from kvroute.sim.profiles import BUILTIN

from .helpers import metric, parse_metrics


async def stream_ttft(http: aiohttp.ClientSession, url: str, prompt: list[int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    async with http.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 2, "stream": True,
                                                        "stream_options": {"include_usage": True}}) as r:
        await r.content.readuntil(b"\n\n")
        ttft = time.perf_counter() - t0
        body = (await r.read()).decode()
    usage = [line for line in body.split("\n\n") if '"usage"' in line][0]
    cached = int(usage.split('"cached_tokens":')[1].split("}")[0])
    return ttft, cached


async def ttft_sum(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url + "/metrics") as r:
        return metric(parse_metrics(await r.text()), "vllm:time_to_first_token_seconds_sum")


async def test_cached_prompt_ttft_well_below_uncached(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, profile="qwen2.5-1.5b-l4", time_scale=2.0) as fleet:
        url = fleet.urls[0]
        prompt = list(range(4000))
        uncached, c1 = await stream_ttft(http, url, prompt)
        sim_uncached = await ttft_sum(http, url)
        cached, c2 = await stream_ttft(http, url, prompt)
        sim_cached = await ttft_sum(http, url) - sim_uncached
    assert (c1, c2) == (0, 3984)
    # Simulated: two 2048-token prefill chunks at ~16k tokens/s vs one 16-token step.
    assert sim_uncached > 5 * sim_cached
    assert cached < uncached  # and the client sees it too


async def run_load(concurrency: int, max_num_seqs: int) -> tuple[float, int, int]:
    """`concurrency` streamed requests at once; returns generated tokens per simulated second,
    and the largest waiting and running counts seen on /metrics."""
    async with SimFleet(instances=1, profile="qwen2.5-1.5b-l4", time_scale=4.0, max_num_seqs=max_num_seqs) as fleet:
        url = fleet.urls[0]
        async with aiohttp.ClientSession() as http:
            prompts = [[i] * 8 + list(range(1000 * i, 1000 * i + 100)) for i in range(concurrency)]

            async def one(p: list[int]) -> None:
                async with http.post(url + "/v1/completions", json={"prompt": p, "max_tokens": 48, "stream": True}) as r:
                    await r.read()

            t0 = fleet.instances[0].engine.clock.now()
            tasks = [asyncio.create_task(one(p)) for p in prompts]
            max_wait = max_run = 0
            while not all(t.done() for t in tasks):
                async with http.get(url + "/metrics") as r:
                    m = parse_metrics(await r.text())
                max_wait = max(max_wait, int(metric(m, "vllm:num_requests_waiting")))
                max_run = max(max_run, int(metric(m, "vllm:num_requests_running")))
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)
            eng = fleet.instances[0].engine
            elapsed = eng.clock.now() - t0
            return eng.stats.generation_tokens / elapsed, max_wait, max_run


async def test_throughput_saturates_and_queue_grows() -> None:
    low, wait_low, _ = await run_load(2, 8)
    full, _, run_full = await run_load(8, 8)
    over, wait_over, run_over = await run_load(32, 8)
    assert wait_low == 0
    assert run_full <= 8 and run_over <= 8
    assert wait_over >= 16  # offered load beyond max_num_seqs queues
    assert full > 2.5 * low  # decode is memory-bound: a bigger batch is nearly free
    assert over == pytest.approx(full, rel=0.25)  # ...up to max_num_seqs, then it saturates


def test_profiles_roofline() -> None:
    l4, t4, h100 = BUILTIN["qwen2.5-1.5b-l4"], BUILTIN["qwen2.5-1.5b-t4"], BUILTIN["llama-3.1-8b-h100"]
    # Decode at batch 1 is bound by reading the weights once.
    weights = l4.weight_bytes / l4.memory_bandwidth
    assert l4.step_seconds(1, 1024) == pytest.approx(l4.step_overhead_s + weights, rel=0.05)
    # A 2048-token prefill is compute-bound at the profile's prefill rate.
    assert l4.step_seconds(2048, 2048) == pytest.approx(l4.step_overhead_s + 2048 / l4.prefill_tokens_per_s, rel=0.1)
    assert h100.prefill_tokens_per_s > l4.prefill_tokens_per_s > t4.prefill_tokens_per_s
    for p in (l4, t4, h100):
        assert p.kv_blocks() > 10_000
        # Batching decode is nearly free while memory-bound.
        assert p.step_seconds(64, 64 * 1024) < 3 * p.step_seconds(1, 1024)


def test_yaml_profile(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("base: llama-3.1-8b-h100\nnum_gpu_blocks: 500\nmax_num_seqs: 7\nprefill_tokens_per_s: 1000\n")
    p = load_profile(str(path), block_size=32)
    assert (p.name, p.kv_blocks(), p.max_num_seqs, p.block_size, p.chat_template) == ("mine", 500, 7, 32, "llama3")
    path.write_text("bogus_field: 1\n")
    with pytest.raises(ValueError, match="bogus_field"):
        load_profile(str(path))
    with pytest.raises(ValueError, match="unknown profile"):
        load_profile("nope")
