"""Prefix cache accounting, eviction, preemption and abort: exact numbers on scripted sequences."""

from __future__ import annotations

import asyncio

import aiohttp

from kvroute.sim import SimFleet

from tests.waiting import eventually

from .helpers import metric, parse_metrics, sse_events


async def complete(http: aiohttp.ClientSession, url: str, prompt: list[int] | str, max_tokens: int = 1) -> dict:
    async with http.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def cached(http: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int = 1) -> int:
    body = await complete(http, url, prompt, max_tokens)
    return body["usage"]["prompt_tokens_details"]["cached_tokens"]


async def scrape(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/metrics") as r:
        return parse_metrics(await r.text())


async def test_cached_tokens_exact(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        url = fleet.urls[0]
        a = list(range(1000, 1100))  # 100 tokens: 6 full blocks of 16
        assert await cached(http, url, a) == 0
        assert await cached(http, url, a) == 96
        # A shared prefix of 4 blocks then something else.
        assert await cached(http, url, a[:64] + list(range(5000, 5036))) == 64
        # A prompt that is exactly 6 cached blocks still recomputes its last token: 5 blocks hit.
        assert await cached(http, url, a[:96]) == 80
        # Diverging inside block 2 hits only block 1.
        assert await cached(http, url, a[:20] + [7] * 30) == 16
        m = await scrape(http, url)
        assert metric(m, "vllm:prefix_cache_queries_total") == 100 + 100 + 100 + 96 + 50
        assert metric(m, "vllm:prefix_cache_hits_total") == 96 + 64 + 80 + 16
        assert metric(m, "vllm:prompt_tokens_total") == 446
        assert metric(m, "vllm:generation_tokens_total") == 5
        assert metric(m, "vllm:request_success_total", finished_reason="length") == 5


async def test_eviction_lru_tail_first(http: aiohttp.ClientSession) -> None:
    # 8 usable blocks of 4 tokens. Freed blocks go to the back of the LRU queue tail first, so
    # the ends of old prompts are evicted before their beginnings, as in vLLM.
    async with SimFleet(instances=1, per_token_delay=0.001, block_size=4, num_gpu_blocks=9) as fleet:
        url = fleet.urls[0]
        x, y, z = list(range(100, 116)), list(range(200, 216)), list(range(300, 308))
        assert [await cached(http, url, p) for p in (x, y, z, x, y)] == [0, 0, 0, 8, 8]
        eng = fleet.instances[0].engine
        # z evicts the ends of x; x returning evicts the ends of y; y returning evicts z.
        assert eng.kv.evictions == 6
        m = await scrape(http, url)
        assert metric(m, "vllm:prefix_cache_queries_total") == 16 + 16 + 8 + 16 + 16
        assert metric(m, "vllm:prefix_cache_hits_total") == 16
        assert metric(m, "vllm:kv_cache_usage_perc") == 0.0  # cached but unreferenced counts as free
        assert metric(m, "vllm:cache_config_info", num_gpu_blocks="9", block_size="4") == 1.0


async def test_no_prefix_caching(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001, enable_prefix_caching=False) as fleet:
        a = list(range(64))
        assert [await cached(http, fleet.urls[0], a) for _ in range(2)] == [0, 0]
        m = await scrape(http, fleet.urls[0])
        assert metric(m, "vllm:cache_config_info", enable_prefix_caching="False") == 1.0


async def test_conversation_turns_share_prefix(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        url = fleet.urls[0] + "/v1/chat/completions"
        msgs = [{"role": "system", "content": "You are terse. " * 20},
                {"role": "user", "content": "Tell me about caches."}]
        async with http.post(url, json={"messages": msgs, "max_tokens": 40}) as r:
            first = await r.json()
        msgs += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "And then?"}]
        async with http.post(url, json={"messages": msgs, "max_tokens": 5}) as r:
            second = await r.json()
        p1 = first["usage"]["prompt_tokens"]
        # The next turn re-tokenizes to the previous prompt plus the generated answer, whose
        # blocks were cached while decoding: every full block of prompt + answer hits.
        full = (p1 + 40 - 1) // 16 * 16
        assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == full
        assert second["usage"]["prompt_tokens"] > p1 + 40


async def test_preemption_when_kv_runs_out(http: aiohttp.ClientSession) -> None:
    # 16 usable blocks of 4 tokens = 64 tokens; four requests growing to 12 + 20 tokens need 32.
    prompts = [list(range(i * 100, i * 100 + 12)) for i in range(4)]
    async with SimFleet(instances=1, per_token_delay=0.001, block_size=4, num_gpu_blocks=17) as fleet:
        url = fleet.urls[0]
        bodies = await asyncio.gather(*(complete(http, url, p, 20) for p in prompts))
        eng = fleet.instances[0].engine
        assert eng.stats.preemptions > 0
        m = await scrape(http, url)
        assert metric(m, "vllm:num_preemptions_total") == eng.stats.preemptions
        assert all(b["usage"]["completion_tokens"] == 20 for b in bodies)
        assert eng.kv.num_free == eng.kv.usable_blocks
    # Preempted requests are recomputed and produce the same answers as an unconstrained run.
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        alone = [await complete(http, fleet.urls[0], p, 20) for p in prompts]
        assert fleet.instances[0].engine.stats.preemptions == 0
    assert [b["choices"][0]["text"] for b in bodies] == [b["choices"][0]["text"] for b in alone]


async def test_client_disconnect_aborts(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.005) as fleet:
        url = fleet.urls[0]
        eng = fleet.instances[0].engine
        async with http.post(url + "/v1/completions",
                             json={"prompt": list(range(40)), "max_tokens": 10_000, "stream": True}) as r:
            await r.content.readuntil(b"\n\n")
            assert eng.kv.num_free < eng.kv.usable_blocks
        await eventually(lambda: eng.stats.success["abort"] == 1)
        assert eng.kv.num_free == eng.kv.usable_blocks
        # Non-streamed: the client gives up while the engine is still generating.
        task = asyncio.create_task(complete(http, url, list(range(50, 90)), 10_000))
        while not eng.running:
            await asyncio.sleep(0.01)
        task.cancel()
        await eventually(lambda: eng.stats.success["abort"] == 2)
        assert not eng.running and not eng.waiting
        assert eng.kv.num_free == eng.kv.usable_blocks
        m = await scrape(http, url)
        assert metric(m, "vllm:request_success_total", finished_reason="abort") == 2
        assert metric(m, "vllm:num_requests_running") == 0


async def test_deterministic_for_a_seed(http: aiohttp.ClientSession) -> None:
    async def run(seed: int) -> list:
        async with SimFleet(instances=1, per_token_delay=0.001, seed=seed) as fleet:
            out = []
            for p in ("alpha", "beta", "alpha"):
                body = await complete(http, fleet.urls[0], p, 8)
                out.append((body["id"], body["choices"][0]["text"]))
            async with http.post(fleet.urls[0] + "/v1/completions",
                                 json={"prompt": "alpha", "max_tokens": 8, "stream": True}) as r:
                # Chunk boundaries depend on timing (late steps merge); the text does not.
                out.append("".join(e["choices"][0]["text"] for e in (await sse_events(r))[:-1]))
            return out

    a, b, c = await run(1), await run(1), await run(2)
    assert a == b
    assert a != c
    assert a[0][1] == a[2][1]  # same prompt, same answer


async def test_late_steps_merge_streamed_output(http: aiohttp.ClientSession) -> None:
    import time

    async with SimFleet(instances=1, per_token_delay=0.005) as fleet:
        async with http.post(fleet.urls[0] + "/v1/completions",
                             json={"prompt": "x", "max_tokens": 60, "stream": True}) as r:
            await r.content.readuntil(b"\n\n")
            time.sleep(0.15)  # block the event loop: the engine falls ~30 steps behind its clock
            events = await sse_events(r)
        texts = [e["choices"][0]["text"] for e in events[:-1]]
        # Caught-up steps went out merged, and nothing was lost.
        assert max(len(t.split()) for t in texts) >= 10
        assert sum(len(t.split()) for t in texts) == 59
        assert fleet.instances[0].engine.stats.lag_max_s > 0.1


async def finish_all(reqs: list) -> None:
    for req in reqs:
        while req.finished_at is None:
            await req.event.wait()
            req.event.clear()


async def test_blocks_cached_when_scheduled_not_after_the_step() -> None:
    # vLLM caches a request's full blocks when it schedules them (allocate_slots ->
    # cache_blocks(num_computed + num_new)), so a request admitted later in the same step hits
    # blocks another request is prefilling in that very step. Mirrors the real-vLLM tier's burst
    # (tests/real_vllm/test_real_vllm_3_simulator.py): 9 requests over 3 documents of 949, 985 and
    # 968 tokens, block size 128 (7 full blocks each), vLLM CPU's 2048-token step budget.
    bs = 128
    docs = [list(range(d * 10_000, d * 10_000 + n)) for d, n in enumerate((947, 983, 966))]
    prompts = [docs[i % 3] + [90_000 + i, 90_100 + i] for i in range(9)]
    async with SimFleet(instances=1, per_token_delay=0.001, block_size=bs, num_gpu_blocks=16384,
                        max_num_batched_tokens=2048) as fleet:
        eng = fleet.instances[0].engine
        # Added without yielding to the event loop: all nine wait when the first step is scheduled.
        reqs = [eng.add_request(p, 8) for p in prompts]
        await finish_all(reqs)
        hits = eng.stats.prefix_hits
    # Step 1: r0 (949) and r1 (985) prefill whole, caching 7 blocks each; r2 gets the last 114
    # tokens of budget (no full block yet). Step 2: running first, r2's remaining 854 tokens are
    # scheduled and its 7 blocks cached at once; then r3..r8 are admitted in the same step and
    # all hit 7 blocks, r5 and r8 included (with caching after the step they would miss: 3584).
    assert [r.cached_tokens for r in reqs] == [0, 0, 0] + [7 * bs] * 6
    assert hits == 6 * 7 * bs == 5376
    assert reqs[2].scheduled_at < reqs[5].scheduled_at == reqs[3].scheduled_at == reqs[8].scheduled_at


async def test_same_step_admissions_share_a_prefix() -> None:
    # Two identical prompts admitted in the same step: the first one's blocks are cached as it is
    # scheduled, so the second one's lookup, later in that step, already hits them (in vLLM too:
    # its waiting loop looks each request up just before allocating it).
    a = list(range(500, 540))  # 40 tokens: 2 full blocks of 16
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        eng = fleet.instances[0].engine
        reqs = [eng.add_request(a, 2), eng.add_request(a + [7], 2)]
        await finish_all(reqs)
    assert reqs[0].scheduled_at == reqs[1].scheduled_at
    assert [r.cached_tokens for r in reqs] == [0, 32]
