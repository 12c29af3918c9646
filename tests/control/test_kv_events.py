"""KV event decoding and the per-backend subscriber, against the simulator's real ZMQ publisher."""

from __future__ import annotations

import asyncio
import contextlib
import aiohttp
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvroute.config import ConfigError, from_mapping
from kvroute.control.kv_decode import Cleared, Removed, Stored, decode_batch
from kvroute.control.kv_events import KVEventSubscriber, endpoints_for
from kvroute.sim import SimFleet
from kvroute.sim.kv_events import all_blocks_cleared, block_removed, block_stored, encode_batch, external_hash

from tests.waiting import eventually

BS = 4


class RecordingSink:
    """The engine's block set as the events describe it, per backend."""

    def __init__(self) -> None:
        self.blocks: dict[str, dict] = {}
        self.resets: list[str] = []

    def apply(self, backend_id, events):
        view = self.blocks.setdefault(backend_id, {})
        for ev in events:
            if isinstance(ev, Stored):
                view[ev.block_hash] = ev
            elif isinstance(ev, Removed):
                for h in ev.block_hashes:
                    view.pop(h, None)
            else:
                view.clear()

    def reset(self, backend_id):
        self.resets.append(backend_id)
        self.blocks[backend_id] = {}

    def view(self, backend_id) -> set:
        return set(self.blocks.get(backend_id, {}))


def test_decodes_the_simulators_batches_per_block():
    payload = encode_batch(12.5, [block_stored([11, 12], 10, [1, 2, 3, 4, 5, 6, 7, 8], 4), block_removed([11]),
                                  all_blocks_cleared()])
    batch = decode_batch(payload)
    assert batch.errors == 0 and batch.ts == 12.5 and batch.data_parallel_rank == 0
    assert batch.events == (Stored(11, 10, (1, 2, 3, 4), 4, None, "GPU"), Stored(12, 11, (5, 6, 7, 8), 4, None, "GPU"),
                            Removed((11,), "GPU"), Cleared())


def test_decodes_the_older_array_like_events_and_counts_bad_ones():
    events = [["BlockStored", [b"\x01" * 32], None, [7, 8], 2, None, "CPU", "adapter"],
              ["BlockRemoved", [b"\x01" * 32], "CPU"], ["AllBlocksCleared"],
              {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None, "token_ids": [1, 2, 3],
               "block_size": 2},  # token count does not match the blocks
              {"type": "Nope"}, 5]
    batch = decode_batch(msgpack.packb([1.0, events]))
    assert batch.events == (Stored(b"\x01" * 32, None, (7, 8), 2, "adapter", "CPU"), Removed((b"\x01" * 32,), "CPU"),
                            Cleared())
    assert batch.errors == 3 and batch.data_parallel_rank is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_count_an_error(data):
    batch = decode_batch(data)
    assert batch.errors >= 0 and all(isinstance(e, (Stored, Removed, Cleared)) for e in batch.events)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=8) | st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "type"]),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.sampled_from(["type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "medium",
                         "lora_name"]), inner, max_size=7),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.floats(allow_nan=False) | st.none(), st.lists(msgpack_values, max_size=5)))
def test_any_well_formed_msgpack_decodes_or_counts_errors(batch):
    ts, events = batch
    out = decode_batch(msgpack.packb([ts, events]))
    assert len(out.events) + out.errors >= 1 or not events


def test_endpoints_from_config():
    s = from_mapping({"kv_events_endpoints": "http://10.0.0.5:8000=tcp://10.0.0.5:5557",
                      "kv_events_port_offset": "100", "kv_events_replay_port_offset": 200}, "test")
    args = (s.kv_events_endpoints, s.kv_events_replay_endpoints, s.kv_events_port_offset,
            s.kv_events_replay_port_offset)
    assert endpoints_for("http://10.0.0.5:8000/", *args) == ("tcp://10.0.0.5:5557", "tcp://10.0.0.5:8200")
    assert endpoints_for("http://h:8001", *args) == ("tcp://h:8101", "tcp://h:8201")
    assert endpoints_for("http://h:8001", {}, {}, 0, 200) == (None, None)
    # One port on every backend's host (pods), before the offset rule.
    assert endpoints_for("http://[fd00::1]:8000", {}, {}, 100, 200, 5557, 5558) == ("tcp://[fd00::1]:5557",
                                                                                   "tcp://[fd00::1]:5558")
    with pytest.raises(ConfigError):
        from_mapping({"kv_events_port": 70000}, "test")
    with pytest.raises(ConfigError):
        from_mapping({"kv_events_replay_timeout": 0}, "test")


def sim(**kw) -> SimFleet:
    # A KV pool far smaller than the working set: most blocks are evicted again.
    return SimFleet(instances=2, kv_events_port=0, per_token_delay=0.001, block_size=BS, num_gpu_blocks=24,
                    kv_events_buffer_steps=kw.pop("buffer_steps", 10_000), **kw)


async def traffic(url: str, start: int, n: int) -> None:
    async with aiohttp.ClientSession() as http:
        for k in range(start, start + n):
            # Shared first block, then a branch per k mod 5, then a unique tail.
            prompt = [1] * BS + [2 + k % 5] * BS + [100 + k] * (BS * (1 + k % 3)) + [7]
            async with http.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": BS + 1}) as r:
                assert r.status == 200


def truth(fleet: SimFleet, i: int) -> set:
    return {external_hash(h) for h in fleet.instances[i].engine.kv.cached}


async def subscribed(fleet: SimFleet, sink: RecordingSink) -> KVEventSubscriber:
    sub = KVEventSubscriber(sink)
    for inst in fleet.instances:
        sub.add(inst.url, inst.kv_events.endpoint, inst.kv_events.replay_endpoint)
    return sub


async def test_view_equals_the_engines_blocks_under_cache_pressure():
    sink = RecordingSink()
    async with sim() as fleet:
        # Traffic before the subscription: the first batch seen is a gap from 0, filled by replay.
        await traffic(fleet.urls[0], 0, 10)
        sub = await subscribed(fleet, sink)
        try:
            await traffic(fleet.urls[0], 10, 30)
            await traffic(fleet.urls[1], 0, 5)
            for i, url in enumerate(fleet.urls):
                await eventually(lambda: sink.view(url) == truth(fleet, i), f"view of {url}")
            assert fleet.instances[0].engine.kv.evictions > 0
            st0 = sub.state(fleet.urls[0])
            assert st0.confirmed and st0.resets == 0 and st0.decode_errors == 0
            assert st0.last_seq == fleet.instances[0].kv_events.state()["next_seq"] - 1
            assert st0.batches == st0.last_seq + 1 and st0.event_lag_s is not None
            assert sink.resets == []
        finally:
            await sub.close()


@contextlib.asynccontextmanager
async def settled_backend():
    """A fleet whose first backend took some traffic and whose view has caught up with it."""
    sink = RecordingSink()
    async with sim() as fleet:
        url = fleet.urls[0]
        sub = await subscribed(fleet, sink)
        try:
            await traffic(url, 0, 5)
            await eventually(lambda: sink.view(url) == truth(fleet, 0) and sub.state(url).batches > 0)
            yield fleet, url, sub, sink
        finally:
            await sub.close()


async def test_dropped_batches_are_replayed():
    async with settled_backend() as (fleet, url, sub, sink):
        await fleet.instances[0].set_fault("kv_drop", 3)
        await traffic(url, 5, 10)
        await eventually(lambda: sink.view(url) == truth(fleet, 0) and sub.state(url).gaps_recovered >= 1,
                         "gap filled by replay")
        st0 = sub.state(url)
        assert st0.resets == 0 and st0.replayed_batches >= 3 and st0.replay_failures == 0


async def test_replay_overrun_resets_the_backend():
    async with settled_backend() as (fleet, url, sub, sink):
        await fleet.instances[0].set_fault("kv_overrun", 2)
        await traffic(url, 5, 10)
        await eventually(lambda: sub.state(url).replay_failures >= 1, "overrun seen")
        st0 = sub.state(url)
        assert st0.resets >= 1 and sink.resets.count(url) == st0.resets and st0.gaps_recovered == 0
        await eventually(lambda: sub.state(url).confirmed, "confirmed again")
        # What the view holds after the reset, the engine holds: nothing stale survives.
        await eventually(lambda: sink.view(url) <= truth(fleet, 0), "no stale block")
        assert sink.view(fleet.urls[1]) == truth(fleet, 1) == set()


async def test_publisher_restart_rebuilds_the_view():
    sink = RecordingSink()
    async with sim() as fleet:
        url = fleet.urls[0]
        sub = await subscribed(fleet, sink)
        try:
            await traffic(url, 0, 8)
            await eventually(lambda: sink.view(url) == truth(fleet, 0) and sub.state(url).batches > 3)
            inst = fleet.instances[0]
            await inst.set_fault("restart", 0)
            await eventually(lambda: not inst.crashed and inst.kv_events.running, "restarted")
            # The SUB socket reconnects by itself, a little after the new publisher binds: batches
            # sent before that are lost to it (ZMQ's slow joiner). The next batch it does get is
            # numbered below the last one seen, which is how a restart shows; replay fills the rest.
            for k in range(100, 130, 3):
                await traffic(url, k, 3)  # fewer batches than before: the sequence goes back
                if sub.state(url).restarts:
                    break
                await asyncio.sleep(0.2)
            await eventually(lambda: sub.state(url).restarts >= 1 and sink.view(url) == truth(fleet, 0),
                             "view rebuilt from the new process's events")
            st0 = sub.state(url)
            assert st0.confirmed and st0.resets >= 1 and url in sink.resets
            assert st0.last_seq == inst.kv_events.state()["next_seq"] - 1
        finally:
            await sub.close()
