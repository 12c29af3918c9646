"""The control plane against simulated vLLM servers: polling, staleness, health, restarts, circuits.

Decisions are taken from the core directly (router.route), so these tests isolate the control side;
tests/admin has the end-to-end versions through the proxy.
"""

from __future__ import annotations

from collections import Counter

from kvroute._native import Rejected, Routed
from tests.control.support import chat, control_only
from tests.waiting import eventually


def backend_of(url: str) -> str:
    return url.removeprefix("http://")


def route_many(gateway, n: int = 20, release: bool = True) -> Counter:
    seen: Counter = Counter()
    for i in range(n):
        decision = gateway.router.route(chat(text=f"request {i}"))
        assert isinstance(decision, Routed), decision
        seen[decision.backend_id] += 1
        if release:
            gateway.router.release(decision.ticket, True)
    return seen


async def test_models_and_load_come_from_the_backends(sims):
    async with control_only(backend=sims.urls) as gateway:
        backends = gateway.fleet.all()
        assert [b.models for b in backends] == [["sim-model"], ["sim-model"]]
        assert all(b.healthy and b.metrics is not None for b in backends)
        assert all(b.metrics.num_gpu_blocks and b.metrics.block_size for b in backends)
        rejected = gateway.router.route(chat(model="other-model"))
        assert isinstance(rejected, Rejected) and rejected.reason == "unknown_model"
        assert set(route_many(gateway)) == {backend_of(u) for u in sims.urls}


async def test_metrics_failure_goes_stale_then_unhealthy_then_recovers(sims):
    async with control_only(backend=sims.urls) as gateway:
        sick = gateway.fleet.get(backend_of(sims.urls[0]))
        await sims.set_fault(0, "metrics_fail")
        await eventually(lambda: sick.stale, "stale after a failed poll")
        await eventually(lambda: not sick.healthy, "unhealthy after K failed polls")
        assert sick.id not in route_many(gateway)
        await sims.set_fault(0, "none")
        await eventually(lambda: sick.healthy and not sick.stale, "healthy after M good polls")
        assert sick.id in route_many(gateway)


async def test_frozen_metrics_under_load_count_as_stale(sims):
    import asyncio

    import httpx

    async with control_only(backend=sims.urls) as gateway, httpx.AsyncClient(timeout=30) as client:
        frozen = gateway.fleet.get(backend_of(sims.urls[0]))
        # A long generation keeps one request running on backend 0 while its page is frozen.
        long = asyncio.create_task(client.post(sims.urls[0] + "/v1/chat/completions",
                                               content=chat(max_tokens=4000, ignore_eos=True),
                                               headers={"content-type": "application/json"}))
        await eventually(lambda: frozen.metrics.running == 1, "the long request is running")
        await sims.set_fault(0, "metrics_stale")
        await eventually(lambda: not frozen.healthy, "unhealthy while its page stands still under load")
        assert frozen.last_error.startswith("stale")
        assert gateway.fleet.get(backend_of(sims.urls[1])).healthy  # idle and unchanged is fine
        long.cancel()
        await asyncio.gather(long, return_exceptions=True)
        await sims.set_fault(0, "none")
        await eventually(lambda: frozen.healthy, "healthy once the page moves again")


async def test_crash_and_restart(sims):
    async with control_only(backend=sims.urls) as gateway:
        victim = gateway.fleet.get(backend_of(sims.urls[0]))
        await sims.set_fault(0, "crash")
        await eventually(lambda: not victim.healthy, "a crashed backend is unhealthy")
        assert victim.id not in route_many(gateway)
        await sims.set_fault(0, "none")  # comes back on the same port
        await eventually(lambda: victim.healthy, "back after the crash")


async def test_counter_reset_clears_the_prefix_index(sims):
    async with control_only(backend=sims.urls[:1]) as gateway:
        backend_id = backend_of(sims.urls[0])

        def indexed_blocks() -> int:
            core = {b["id"]: b for b in gateway.router.snapshot()["backends"]}
            return core[backend_id]["index"]["blocks"]

        # Real traffic so that vLLM's counters are non-zero, and routing so the core indexes prompts.
        import httpx

        async with httpx.AsyncClient() as client:
            for i in range(3):
                decision = gateway.router.route(chat(text="a long shared system prompt " * 20 + str(i)))
                response = await client.post(sims.urls[0] + "/v1/chat/completions",
                                             content=chat(text="a long shared system prompt " * 20 + str(i)),
                                             headers={"content-type": "application/json"})
                assert response.status_code == 200
                gateway.router.release(decision.ticket, True)
        backend = gateway.fleet.get(backend_id)
        await eventually(lambda: backend.metrics.prefix_queries, "counters seen")
        assert indexed_blocks() > 0
        await sims.set_fault(0, "restart")  # back at once, counters from zero
        await eventually(lambda: indexed_blocks() == 0, "prefix index cleared after the restart")
        assert backend.healthy or not backend.liveness.known


async def test_circuit_opens_on_reported_failures_and_probes_back(sims):
    async with control_only(backend=sims.urls) as gateway:
        fleet = gateway.fleet
        bad = fleet.get(backend_of(sims.urls[0]))
        await sims.set_fault(0, "error_rate", 1.0)
        for _ in range(3):
            fleet.report(bad.id, False, "http_5xx")
        assert bad.circuit.value == "open"
        assert bad.id not in route_many(gateway)
        # The probe after each cool-down fails while the backend still answers 500: open again.
        await eventually(lambda: bad.breaker.trips >= 2, "a failed half-open probe reopens the circuit")
        assert bad.id not in route_many(gateway)
        await sims.set_fault(0, "none")
        await eventually(lambda: bad.circuit.value == "closed", "a passing probe closes the circuit")
        assert bad.id in route_many(gateway)


async def test_requests_go_only_to_backends_serving_the_model():
    from kvroute.sim import SimFleet

    async with SimFleet(instances=1, model="llama") as llama, SimFleet(instances=1, model=["qwen", "qwen-chat"]) as qwen:
        async with control_only(backend=llama.urls + qwen.urls) as gateway:
            for model, urls in (("llama", llama.urls), ("qwen-chat", qwen.urls)):
                for i in range(4):
                    decision = gateway.router.route(chat(model=model, text=f"q{i}"))
                    assert isinstance(decision, Routed) and decision.backend_id == backend_of(urls[0])
                    gateway.router.release(decision.ticket, True)
