"""The simulator's KV event publisher, read over real ZMQ sockets as vLLM 0.32's are."""

from __future__ import annotations

import asyncio

import aiohttp
import msgpack
import zmq
import zmq.asyncio

from kvroute.sim import SimFleet
from kvroute.sim.kv_events import END_SEQ, external_hash

from tests.waiting import eventually

BS = 4


def fleet(**kw) -> SimFleet:
    kw.setdefault("num_gpu_blocks", 64)
    return SimFleet(instances=1, kv_events_port=0, per_token_delay=0.001, block_size=BS, **kw)


async def complete(http: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int = 1) -> None:
    async with http.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens}) as r:
        assert r.status == 200, await r.text()


class Sub:
    """A raw SUB socket collecting [topic, seq, payload] messages."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)

    async def recv(self) -> tuple[bytes, int, list]:
        topic, seq, payload = await asyncio.wait_for(self.sock.recv_multipart(), 10)
        assert len(seq) == 8
        return topic, int.from_bytes(seq, "big"), msgpack.unpackb(payload)

    def close(self) -> None:
        self.sock.close(0)


async def joined(http: aiohttp.ClientSession, sub: Sub, url: str) -> int:
    """Send single-block prompts until the SUB socket has connected (ZMQ's slow joiner); the next seq."""
    n = 0
    while True:
        await complete(http, url, [1000 + n] * BS + [1])
        n += 1
        try:
            _, seq, _ = await asyncio.wait_for(sub.recv(), 0.2)
            break
        except asyncio.TimeoutError:
            continue
    while True:  # drain the rest of the joining traffic
        try:
            _, seq, _ = await asyncio.wait_for(sub.recv(), 0.2)
        except asyncio.TimeoutError:
            return seq + 1


async def replay(endpoint: str, start: int) -> list[list[bytes]]:
    d = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(endpoint)
    try:
        await d.send_multipart([b"", start.to_bytes(8, "big")])
        out = []
        while True:
            frames = await asyncio.wait_for(d.recv_multipart(), 10)
            if frames[2] == END_SEQ:
                assert frames == [b"", b"", END_SEQ, b""]
                return out
            out.append(frames)
    finally:
        d.close(0)


async def test_block_stored_is_vllm_032_wire_format(http):
    async with fleet() as f:
        inst = f.instances[0]
        sub = Sub(inst.kv_events.endpoint)
        try:
            nxt = await joined(http, sub, inst.url)
            prompt = list(range(1, 3 * BS + 2))  # three full blocks and one token
            await complete(http, inst.url, prompt)
            topic, seq, batch = await sub.recv()
        finally:
            sub.close()
        assert topic == b"" and seq == nxt
        ts, events, rank = batch
        assert isinstance(ts, float) and rank == 0
        (ev,) = events
        assert list(ev) == ["type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                            "medium", "lora_name", "group_idx"]
        assert ev["type"] == "BlockStored" and ev["parent_block_hash"] is None
        assert ev["token_ids"] == prompt[: 3 * BS] and ev["block_size"] == BS
        assert ev["medium"] == "GPU" and ev["lora_id"] is None and ev["lora_name"] is None and ev["group_idx"] == 0
        truth = {external_hash(h) for h in inst.engine.kv.cached}
        assert all(isinstance(h, int) and 0 <= h < 2**64 for h in ev["block_hashes"])
        assert set(ev["block_hashes"]) <= truth and len(ev["block_hashes"]) == 3


async def test_eviction_removal_reset_and_bounded_replay(http):
    async with fleet(num_gpu_blocks=6, kv_events_buffer_steps=3) as f:
        inst = f.instances[0]
        for k in range(4):  # 5 usable blocks: later prompts evict earlier ones
            await complete(http, inst.url, [k + 1] * (2 * BS) + [9])
        async with http.post(inst.url + "/reset_prefix_cache") as r:
            assert r.status == 200
        assert inst.engine.kv.cached == {}
        frames = await replay(inst.kv_events.replay_endpoint, 0)
        assert len(frames) == 3  # the buffer keeps the last 3 batches
        seqs = [int.from_bytes(fr[2], "big") for fr in frames]
        assert seqs == list(range(seqs[0], seqs[0] + 3)) and seqs[0] > 0
        assert all(fr[0] == b"" and fr[1] == b"" for fr in frames)
        kinds = [[e["type"] for e in msgpack.unpackb(fr[3])[1]] for fr in frames]
        assert kinds[-1] == ["AllBlocksCleared"]
        assert any("BlockRemoved" in k for k in kinds[:-1])
        removed = [e for fr in frames for e in msgpack.unpackb(fr[3])[1] if e["type"] == "BlockRemoved"]
        assert list(removed[0]) == ["type", "block_hashes", "medium", "group_idx"]
        assert (await replay(inst.kv_events.replay_endpoint, seqs[-1] + 1)) == []


async def test_faults_drop_overrun_restart(http):
    async with fleet() as f:
        inst = f.instances[0]
        pub = inst.kv_events
        sub = Sub(pub.endpoint)
        try:
            nxt = await joined(http, sub, inst.url)
            await inst.set_fault("kv_drop", 2)
            for k in range(3):
                await complete(http, inst.url, [50 + k] * BS + [1])
            _, seq, _ = await sub.recv()
            assert seq == nxt + 2  # two batches never sent ...
            got = [int.from_bytes(fr[2], "big") for fr in await replay(pub.replay_endpoint, nxt)]
            assert got == [nxt, nxt + 1, nxt + 2]  # ... but replayed

            await inst.set_fault("kv_overrun", 1)
            await complete(http, inst.url, [60] * BS + [1])
            await complete(http, inst.url, [61] * BS + [1])
            _, seq, _ = await sub.recv()
            assert seq == nxt + 4
            got = [int.from_bytes(fr[2], "big") for fr in await replay(pub.replay_endpoint, nxt + 3)]
            assert got == [nxt + 4]  # lost from the buffer too

            await inst.set_fault("restart", 0)
            await eventually(lambda: not inst.crashed and pub.running, "restarted")
            assert pub.state()["next_seq"] == 0 and pub.state()["buffered"] == 0
            seq = None
            for k in range(200):  # until the SUB socket has reconnected
                await complete(http, inst.url, [70 + k] * BS + [1])
                try:
                    _, seq, _ = await asyncio.wait_for(sub.recv(), 0.2)
                    break
                except asyncio.TimeoutError:
                    pass
            assert seq is not None and seq < nxt + 4  # numbering started again from 0
        finally:
            sub.close()
