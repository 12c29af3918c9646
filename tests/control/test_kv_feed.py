"""The exact cache view end to end: the simulator's engines publish KV events over ZMQ, the feed
subscribes and hands them to the routing core, and the core's view is checked against each
engine's true block set and against the cached tokens the engine reports, request by request."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp

from kvroute import Router
from kvroute.config import Settings
from kvroute.control.fleet import Backend, Fleet
from kvroute.control.kv_feed import KVFeed, as_tuples
from kvroute.control.kv_decode import Cleared, Removed, Stored
from kvroute.sim import SimFleet
from kvroute.sim.kv_events import external_hash

from tests.waiting import eventually

BS = 4
MODEL = "sim-model"


def truth(sim: SimFleet, i: int) -> set[int]:
    return {external_hash(h) for h in sim.instances[i].engine.kv.cached}


def prompt(k: int) -> list[int]:
    # Two families (first block), a branch per k mod 5, a tail per k mod 7: prefixes shared at
    # several depths, and new ones the cost policy spreads over both engines.
    return [1 + 8 * (k % 2)] * BS + [2 + k % 5] * BS + [100 + k % 7] * (BS * (1 + k % 3)) + [7 + k]


def test_as_tuples_regroups_one_stored_run():
    evs = [Stored(1, None, (1, 2), 2, None, "GPU"), Stored(2, 1, (3, 4), 2, None, "GPU"),
           Stored(9, 5, (5, 6), 2, None, "GPU"), Removed((1,), None), Cleared()]
    assert as_tuples(evs) == [("stored", [1, 2], None, [1, 2, 3, 4], 2, None, "GPU"),
                              ("stored", [9], 5, [5, 6], 2, None, "GPU"), ("removed", [1], None), ("cleared",)]

WARM_UP_TOKEN = itertools.count(1000)  # tokens no test prompt uses


async def subscribed(feed: KVFeed, pairs: list[tuple[Any, Backend]]) -> None:
    """Until each subscriber has applied a batch, send its engine a one-block request of its own.
    A ZMQ subscription takes effect a moment after it connects: the batches of a first request
    published before then are lost, and with no later batch to reveal the gap the view never
    catches up (CI saw that as a timeout on the first request). Each request's block is new, so
    that it is stored (and published) even where an earlier one is cached."""
    async with aiohttp.ClientSession() as http:
        for n, (inst, backend) in enumerate(pairs):
            for _ in range(50):
                if feed.states()[backend.id]["batches"]:
                    break
                body = {"model": MODEL, "prompt": [next(WARM_UP_TOKEN)] * BS + [3], "max_tokens": 1}
                async with http.post(inst.url + "/v1/completions", json=body) as r:
                    assert r.status == 200
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no KV event batch from {inst.url} ever reached the subscriber")


async def test_view_and_predictions_match_the_engines_under_cache_pressure():
    # The KV pool (24 blocks) is about a quarter of what the traffic touches: most blocks get evicted.
    async with SimFleet(instances=2, kv_events_port=0, per_token_delay=0.001, block_size=BS, num_gpu_blocks=24,
                        model=MODEL) as sim:
        settings = Settings(block_tokens=BS,
                            kv_events_endpoints={i.url: i.kv_events.endpoint for i in sim.instances},
                            kv_events_replay_endpoints={i.url: i.kv_events.replay_endpoint for i in sim.instances})
        router = Router("cost", block_tokens=BS)
        fleet = Fleet(router, settings)
        backends = [fleet.add(url, models=[MODEL]) for url in sim.urls]
        feed = KVFeed(settings, router, fleet)
        feed.sync()
        await subscribed(feed, list(zip(sim.instances, backends)))

        def settled() -> bool:
            return all(set(router.kv_engine_hashes(b.id)) == truth(sim, i) for i, b in enumerate(backends))

        checked = hits = 0
        try:
            async with aiohttp.ClientSession() as http:
                for k in range(60):
                    await eventually(settled, f"view equals the engines' blocks before request {k}")
                    body = json.dumps({"model": MODEL, "prompt": prompt(k), "max_tokens": BS + 1}).encode()
                    d = router.route(body, "completions")
                    url = fleet.get(d.backend_id).url
                    async with http.post(url + "/v1/completions", data=body,
                                         headers={"content-type": "application/json"}) as r:
                        assert r.status == 200
                        usage = (await r.json())["usage"]
                    cached = usage["prompt_tokens_details"]["cached_tokens"]
                    assert d.cached_tokens == cached, (k, d, usage)
                    checked += 1
                    hits += cached > 0
                    router.release(d.ticket, True, usage["prompt_tokens"], cached, usage["completion_tokens"], 0.01)
            await eventually(settled, "view equals the engines' blocks at the end")
            assert checked == 60 and hits > 20
            assert all(i.engine.kv.evictions > 0 for i in sim.instances)
            snap = {b["id"]: b for b in router.snapshot()["backends"]}
            for b in backends:
                view = snap[b.id]["kv_events"]
                assert view["confirmed"] and view["removed"] > 0 and view["orphans"] == 0, view
                assert view["speculative_blocks"] == 0  # nothing in flight
            assert all(st["confirmed"] and st["resets"] == 0 for st in feed.states().values())
        finally:
            await feed.close()


async def test_two_replicas_fed_the_same_requests_pick_the_same_backends():
    """Two routing processes share no state; each subscribes to every engine. Given the same
    requests and outcomes they must make the same choices, because their cache views are built
    from the same events."""
    async with SimFleet(instances=3, kv_events_port=0, per_token_delay=0.001, block_size=BS, num_gpu_blocks=32,
                        model=MODEL) as sim:
        settings = Settings(block_tokens=BS,
                            kv_events_endpoints={i.url: i.kv_events.endpoint for i in sim.instances},
                            kv_events_replay_endpoints={i.url: i.kv_events.replay_endpoint for i in sim.instances})
        replicas = []
        for _ in range(2):
            router = Router("cost", block_tokens=BS)
            fleet = Fleet(router, settings)
            backends = [fleet.add(url, models=[MODEL]) for url in sim.urls]
            feed = KVFeed(settings, router, fleet)
            feed.sync()
            await subscribed(feed, list(zip(sim.instances, backends)))
            replicas.append((router, fleet, backends, feed))

        def settled() -> bool:
            return all(set(router.kv_engine_hashes(b.id)) == truth(sim, i)
                       for router, _, backends, _ in replicas for i, b in enumerate(backends))

        picks: list[str] = []
        try:
            async with aiohttp.ClientSession() as http:
                for k in range(40):
                    await eventually(settled, f"both views equal the engines' blocks before request {k}")
                    body = json.dumps({"model": MODEL, "prompt": prompt(k) * (1 + k % 2), "max_tokens": BS}).encode()
                    a, b = (router.route(body, "completions") for router, *_ in replicas)
                    assert (a.backend_id, a.cached_tokens, a.branch) == (b.backend_id, b.cached_tokens, b.branch), k
                    picks.append(a.backend_id)
                    async with http.post(replicas[0][1].get(a.backend_id).url + "/v1/completions", data=body,
                                         headers={"content-type": "application/json"}) as r:
                        usage = (await r.json())["usage"]
                    for (router, *_), d in zip(replicas, (a, b)):
                        router.release(d.ticket, True, usage["prompt_tokens"],
                                       usage["prompt_tokens_details"]["cached_tokens"], usage["completion_tokens"], 0.05)
            assert len(set(picks)) >= 2, picks  # the choices were not trivially one backend
        finally:
            for *_, feed in replicas:
                await feed.close()


def fed_by(inst: Any) -> tuple[Settings, Router, Fleet, Backend, KVFeed]:
    """A router whose one backend is the simulator instance `inst`, its KV events subscribed."""
    settings = Settings(block_tokens=BS, kv_events_endpoints={inst.url: inst.kv_events.endpoint},
                        kv_events_replay_endpoints={inst.url: inst.kv_events.replay_endpoint})
    router = Router("cost", block_tokens=BS)
    fleet = Fleet(router, settings)
    backend = fleet.add(inst.url, models=[MODEL])
    feed = KVFeed(settings, router, fleet)
    feed.sync()
    return settings, router, fleet, backend, feed


async def test_the_routers_view_recovers_from_drops_overrun_and_restart():
    async with SimFleet(instances=1, kv_events_port=0, per_token_delay=0.001, block_size=BS, num_gpu_blocks=24,
                        model=MODEL, kv_events_buffer_steps=10_000) as sim:
        inst = sim.instances[0]
        settings, router, fleet, backend, feed = fed_by(inst)
        await subscribed(feed, [(inst, backend)])

        def view() -> dict:
            return {b["id"]: b for b in router.snapshot()["backends"]}[backend.id]["kv_events"]

        def exact() -> bool:
            return set(router.kv_engine_hashes(backend.id)) == truth(sim, 0)

        def caught_up() -> bool:
            return feed.states()[backend.id]["last_seq"] == inst.kv_events.state()["next_seq"] - 1

        async def traffic(start: int, n: int) -> None:
            async with aiohttp.ClientSession() as http:
                for k in range(start, start + n):
                    async with http.post(inst.url + "/v1/completions",
                                         json={"model": MODEL, "prompt": prompt(k), "max_tokens": BS}) as r:
                        assert r.status == 200

        try:
            await traffic(0, 6)
            await eventually(exact, "view settled")
            # Dropped batches: replayed, the view stays exact, no reset.
            await inst.set_fault("kv_drop", 3)
            await traffic(6, 8)
            await eventually(lambda: exact() and feed.states()[backend.id]["gaps_recovered"] >= 1, "gap replayed")
            assert view()["resets"] == 0
            # Lost from the replay buffer too: the view is reset, then holds only what the engine holds.
            await inst.set_fault("kv_overrun", 2)
            await traffic(14, 8)
            await eventually(lambda: view()["resets"] >= 1 and view()["confirmed"], "reset and confirmed again")
            # Every batch published so far has been applied (a later one would add orphans after
            # the count below was read: CI saw 27 against 26).
            await eventually(caught_up, "subscriber caught up with the publisher")
            assert set(router.kv_engine_hashes(backend.id)) <= truth(sim, 0)
            # Blocks stored on top of what the reset forgot cannot be keyed: counted as orphans.
            orphans = view()["orphans"]
            # A restarted engine: empty cache, a publisher counting from 0 again; the view rebuilds.
            await inst.set_fault("restart", 0)
            await eventually(lambda: not inst.crashed and inst.kv_events.running, "restarted")
            for k in range(30, 60, 3):  # until the subscriber has seen the new publisher (ZMQ reconnects)
                await traffic(k, 3)
                if feed.states()[backend.id]["restarts"]:
                    break
                await asyncio.sleep(0.2)
            await eventually(lambda: feed.states()[backend.id]["restarts"] >= 1 and exact(), "view rebuilt")
            assert view()["orphans"] == orphans  # the new engine's chains all start from the root
        finally:
            await feed.close()


async def test_a_backend_that_went_down_is_not_routed_on_the_blocks_it_lost():
    """vLLM publishes nothing until its engine steps, so after a restart the subscriber hears of
    the new, empty engine only with its first request. The feed drops a backend's view when the
    backend fails its health checks; the first request after the restart is predicted from an
    empty view, as the engine answers it."""
    async with SimFleet(instances=1, kv_events_port=0, per_token_delay=0.001, block_size=BS, num_gpu_blocks=64,
                        model=MODEL) as sim:
        inst = sim.instances[0]
        settings, router, fleet, backend, feed = fed_by(inst)
        await subscribed(feed, [(inst, backend)])

        def health(ok: bool) -> None:
            for _ in range(max(settings.unhealthy_after, settings.healthy_after)):
                backend.liveness.record(ok)
            fleet.push(backend)
            feed.sync()

        try:
            async with aiohttp.ClientSession() as http:
                async def send(k: int = 3) -> tuple[int, int]:
                    body = json.dumps({"model": MODEL, "prompt": prompt(k), "max_tokens": 2}).encode()
                    d = router.route(body, "completions")
                    async with http.post(inst.url + "/v1/completions", data=body,
                                         headers={"content-type": "application/json"}) as r:
                        usage = (await r.json())["usage"]
                    router.release(d.ticket, True, usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"],
                                   usage["completion_tokens"], 0.01)
                    return d.cached_tokens, usage["prompt_tokens_details"]["cached_tokens"]

                await send()
                await eventually(lambda: set(router.kv_engine_hashes(backend.id)) == truth(sim, 0) != set(), "stored")
                predicted, cached = await send()
                assert predicted == cached > 0
                await inst.set_fault("restart", 0)
                await eventually(lambda: not inst.crashed and inst.kv_events.running, "restarted")
                assert truth(sim, 0) == set() and router.kv_engine_hashes(backend.id) != []
                health(False)  # what the poller sees while the engine is away
                assert router.kv_engine_hashes(backend.id) == []
                health(True)
                assert not feed.states()[backend.id]["confirmed"]
                assert await send() == (0, 0)
                # The SUB socket reconnects a little after the new publisher binds, and batches sent
                # before that are lost to it (ZMQ's slow joiner); a later one (new blocks: a new
                # prompt) shows the gap, which the replay buffer fills.
                for k in range(10, 60):
                    if feed.states()[backend.id]["confirmed"]:
                        break
                    await asyncio.sleep(0.1)
                    await send(k)
                await eventually(lambda: set(router.kv_engine_hashes(backend.id)) == truth(sim, 0) != set(),
                                 "rebuilt from the new engine's events")
                predicted, cached = await send()
                assert predicted == cached > 0
                assert feed.states()[backend.id]["resets"] == 1
        finally:
            await feed.close()


async def test_an_unreachable_publisher_leaves_the_routers_own_view():
    """Events configured but never arriving (a wrong port, a NetworkPolicy): the backend is not
    event-fed until a batch arrives, so routing keeps the router's own guess instead of seeing
    every backend cold."""
    async with SimFleet(instances=2, per_token_delay=0.001, block_size=BS, model=MODEL) as sim:
        settings = Settings(block_tokens=BS, kv_events_endpoints={url: "tcp://127.0.0.1:9" for url in sim.urls})
        router = Router("cost", block_tokens=BS)
        fleet = Fleet(router, settings)
        for url in sim.urls:
            fleet.add(url, models=[MODEL])
        feed = KVFeed(settings, router, fleet)
        feed.sync()
        try:
            body = json.dumps({"model": MODEL, "prompt": prompt(3), "max_tokens": BS}).encode()
            first = router.route(body, "completions")
            router.release(first.ticket, True, 20, 0, BS, 0.01)
            again = router.route(body, "completions")
            assert again.backend_id == first.backend_id and again.cached_tokens > 0
            snap = {b["id"]: b for b in router.snapshot()["backends"]}
            assert all(b["kv_events"] is None for b in snap.values())
        finally:
            await feed.close()
