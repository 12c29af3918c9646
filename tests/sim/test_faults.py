"""Every fault mode, in-process and over HTTP (`POST /sim/fault`)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from kvroute.sim import SimFleet

from tests.waiting import eventually

from .helpers import metric, parse_metrics

PROMPT = {"prompt": "The quick brown fox", "max_tokens": 3}


async def fault(http: aiohttp.ClientSession, url: str, mode: str, value: float | None = None) -> int:
    body = {"mode": mode} if value is None else {"mode": mode, "value": value}
    async with http.post(url + "/sim/fault", json=body) as r:
        return r.status


async def status(url: str, path: str = "/health") -> int | str:
    # A fresh connection each time: a crash drops pooled ones.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        try:
            if path == "/health" or path == "/metrics":
                async with s.get(url + path) as r:
                    return r.status
            async with s.post(url + path, json=PROMPT) as r:
                return r.status
        except aiohttp.ClientConnectionError:
            return "refused"


async def state(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/sim/state") as r:
        return await r.json()


async def test_crash_drops_streams_and_refuses_until_brought_back(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=2, per_token_delay=0.002) as fleet:
        url, other = fleet.urls
        assert await status(url, "/v1/completions") == 200
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/completions",
                              json={"prompt": "x", "max_tokens": 100_000, "stream": True}) as r:
                await r.content.readuntil(b"\n\n")
                assert await fault(http, url, "crash") == 200
                rest = b""
                try:
                    while chunk := await r.content.read(1 << 16):
                        rest += chunk
                except aiohttp.ClientError:
                    pass  # a reset or an incomplete chunked body, depending on timing
                assert b"[DONE]" not in rest  # the stream was cut, not finished
        await eventually(lambda: fleet.instances[0].crashed)
        assert await status(url) == "refused"
        assert await status(other) == 200  # one instance's crash leaves the others alone
        await fleet.instances[0].set_fault("none")
        assert await status(url) == 200
        st = await state(http, url)
        assert st["requests"] == 0 and st["cached_blocks"] == 0 and st["kv_blocks_used"] == 0


async def test_stop_cuts_open_streams_inside_the_response() -> None:
    # A stopped server's streams must not look finished: a clean last chunk without [DONE] (what
    # aiohttp writes when a handler returns) would let a client take a cut answer for a whole one.
    async with SimFleet(instances=1, per_token_delay=0.05) as fleet:
        async with aiohttp.ClientSession() as s:
            async with s.post(fleet.urls[0] + "/v1/completions",
                              json={"prompt": "x", "max_tokens": 1000, "stream": True}) as r:
                assert r.status == 200
                await r.content.readuntil(b"\n\n")
                await fleet.instances[0].stop()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()


async def test_crash_with_value_comes_back_on_its_own(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.002) as fleet:
        url = fleet.urls[0]
        port = fleet.instances[0].port
        assert await fault(http, url, "crash", 0.3) == 200
        await eventually(lambda: fleet.instances[0].crashed)
        assert await status(url) == "refused"
        await eventually(lambda: not fleet.instances[0].crashed, "instance back")
        assert fleet.instances[0].port == port
        assert await status(url) == 200


async def test_restart_empties_cache_and_resets_counters() -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        url = fleet.urls[0]
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(url + "/v1/completions", json={"prompt": list(range(64)), "max_tokens": 2}) as r:
                    cached = (await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached == 48
            assert await fault(http, url, "restart") == 200
        await eventually(lambda: fleet.instances[0].engine.stats.requests == 0)
        await eventually(lambda: not fleet.instances[0].crashed)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/metrics") as r:
                m = parse_metrics(await r.text())
            assert metric(m, "vllm:prefix_cache_queries_total") == 0
            assert metric(m, "vllm:generation_tokens_total") == 0
            async with http.post(url + "/v1/completions", json={"prompt": list(range(64)), "max_tokens": 2}) as r:
                assert (await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_hang_accepts_and_never_answers_until_cleared(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.002) as fleet:
        url = fleet.urls[0]
        eng = fleet.instances[0].engine
        async with aiohttp.ClientSession() as s:
            stream = await s.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 100_000, "stream": True})
            await stream.content.readuntil(b"\n\n")
            assert await fault(http, url, "hang") == 200
            health = asyncio.create_task(status(url))
            chat = asyncio.create_task(status(url, "/v1/completions"))
            await eventually(lambda: eng.paused)
            tokens = eng.stats.generation_tokens
            await asyncio.sleep(0.3)  # ~150 steps' worth: nothing moves while hung
            assert not health.done() and not chat.done()
            assert eng.stats.generation_tokens == tokens
            assert (await state(http, url))["faults"]["hang"] is True
            assert await fault(http, url, "none") == 200
            assert await health == 200 and await chat == 200
            await eventually(lambda: eng.stats.generation_tokens > tokens)
            stream.close()


async def test_error_rate(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        url = fleet.urls[0] + "/v1/completions"
        assert await fault(http, fleet.urls[0], "error_rate", 1.0) == 200
        async with http.post(url, json=PROMPT) as r:
            assert r.status == 500
            assert (await r.json())["error"]["code"] == 500
        assert await status(fleet.urls[0]) == 200  # health is unaffected
        assert await fault(http, fleet.urls[0], "error_rate", 0.5) == 200
        codes = []
        for _ in range(40):
            async with http.post(url, json=PROMPT) as r:
                codes.append(r.status)
        assert set(codes) == {200, 500}
        assert await fault(http, fleet.urls[0], "error_rate", 0) == 200
        assert await status(fleet.urls[0], "/v1/completions") == 200


async def test_slow_multiplies_step_time(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.002) as fleet:
        url = fleet.urls[0]

        async def e2e_sum() -> float:
            async with http.get(url + "/metrics") as r:
                return metric(parse_metrics(await r.text()), "vllm:e2e_request_latency_seconds_sum")

        async with http.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 20}) as r:
            assert r.status == 200
        fast = await e2e_sum()
        assert await fault(http, url, "slow", 3.0) == 200
        async with http.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 20}) as r:
            assert r.status == 200
        slow = await e2e_sum() - fast
        # Simulated seconds: 20 steps of 2 ms, then of 6 ms.
        assert slow / fast == pytest.approx(3.0, rel=0.15)


async def test_metrics_fail_and_stale(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        url = fleet.urls[0]
        assert await fault(http, url, "metrics_fail") == 200
        assert await status(url, "/metrics") == 500
        assert await status(url, "/v1/completions") == 200
        assert await fault(http, url, "none") == 200
        assert await status(url, "/metrics") == 200

        async def scrape() -> str:
            async with http.get(url + "/metrics") as r:
                return await r.text()

        assert await fault(http, url, "metrics_stale") == 200
        frozen = await scrape()
        assert await status(url, "/v1/completions") == 200
        assert await scrape() == frozen
        assert await fault(http, url, "none") == 200
        assert metric(parse_metrics(await scrape()), "vllm:generation_tokens_total") == 6  # two requests


@pytest.mark.parametrize("body", [{"mode": "explode"}, {"mode": "error_rate"}, {"mode": "error_rate", "value": 2},
                                  {"mode": "slow", "value": -1}, {"mode": "slow", "value": "x"}, [1]])
async def test_bad_fault_requests(http: aiohttp.ClientSession, body: object) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        async with http.post(fleet.urls[0] + "/sim/fault", json=body) as r:
            assert r.status == 400
            assert "message" in (await r.json())["error"]


async def test_in_process_fault_methods() -> None:
    async with SimFleet(instances=2, per_token_delay=0.001) as fleet:
        await fleet.set_fault(1, "metrics_fail")
        assert fleet.instances[1].state()["faults"]["metrics_fail"] is True
        assert fleet.instances[0].state()["faults"]["metrics_fail"] is False
        with pytest.raises(ValueError):
            await fleet.instances[0].set_fault("bogus")


async def test_pending_comeback_cancelled_cleanly() -> None:
    # A crash with a come-back timer, then an explicit restart and stop: no stray timers fire.
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        inst = fleet.instances[0]
        await inst.set_fault("crash", 30)
        await inst.set_fault("crash", 20)  # re-arms the timer
        await inst.set_fault("none")
        assert not inst.crashed
        await inst.set_fault("crash", 30)
    assert inst.crashed  # stopped while down; the timer died with it
