"""KV cache events as vLLM 0.32's ZMQ publisher sends them (vllm/distributed/kv_events.py).

PUB socket: multipart [topic, 8-byte big-endian sequence number, msgpack KVEventBatch]. The batch
is msgspec's array-like encoding of EventBatch, [ts, events, data_parallel_rank]; each event is a
tagged struct encoded as a map whose first key is "type" ("BlockStored", "BlockRemoved",
"AllBlocksCleared"), with every field that has no default present even when None, and fields with
a default present only when set (group_idx is always set to the KV cache group, 0 here). Block
hashes are unsigned 64-bit ints (vLLM's default, VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1).

ROUTER replay socket: a request [identity, b"", start_seq] is answered with one message
[identity, b"", topic, seq, payload] per buffered batch from start_seq on, then the end marker
[identity, b"", b"", -1 as 8 signed bytes, b""]. The buffer keeps the last `buffer_steps` batches.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import msgpack
import zmq
import zmq.asyncio

MEDIUM_GPU = "GPU"
END_SEQ = (-1).to_bytes(8, "big", signed=True)
U64 = (1 << 64) - 1


def external_hash(h: int) -> int:
    """The simulator's block hashes are Python's signed 64-bit tuple hashes; vLLM publishes u64."""
    return h & U64


def block_stored(hashes: list[int], parent: int | None, token_ids: list[int], block_size: int) -> dict[str, Any]:
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent, "token_ids": token_ids,
            "block_size": block_size, "lora_id": None, "medium": MEDIUM_GPU, "lora_name": None, "group_idx": 0}


def block_removed(hashes: list[int]) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": MEDIUM_GPU, "group_idx": 0}


def all_blocks_cleared() -> dict[str, Any]:
    return {"type": "AllBlocksCleared"}


def encode_batch(ts: float, events: list[dict[str, Any]], data_parallel_rank: int = 0) -> bytes:
    return msgpack.packb([ts, events, data_parallel_rank], use_bin_type=True)


class KVEventPublisher:
    """One instance's publisher. `publish(events)` is synchronous (called from the engine's step);
    the replay socket is served by a task on the running loop.

    Faults (SimInstance.set_fault): `drop(n)` sends the next n batches to nobody but keeps them for
    replay (a subscriber sees a gap it can fill); `overrun(n)` loses the next n batches from the
    replay buffer as well (as if it had wrapped before the subscriber asked)."""

    def __init__(self, host: str, port: int, replay_port: int | None, buffer_steps: int = 10_000,
                 topic: str = "") -> None:
        if buffer_steps < 1:
            raise ValueError("kv_events buffer_steps must be at least 1")
        self.host = host
        self.port = port
        self.replay_port = replay_port
        self.buffer_steps = buffer_steps
        self.topic = topic.encode()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self._pub: zmq.Socket[bytes] | None = None
        self._replay: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.drop_next = 0
        self.overrun_next = 0
        self.published = 0
        self.dropped = 0
        self.replays = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def replay_endpoint(self) -> str | None:
        return None if self.replay_port is None else f"tcp://{self.host}:{self.replay_port}"

    async def start(self) -> None:
        """Bind (a port of 0 picks a free one, kept for restarts); sequence numbers start at 0."""
        self._seq = 0
        self._buffer.clear()
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.set_hwm(100_000)
        self.port = await _bind(pub, self.host, self.port)
        self._pub = pub
        if self.replay_port is not None:
            replay = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
            replay.setsockopt(zmq.LINGER, 0)
            self.replay_port = await _bind(replay, self.host, self.replay_port)
            self._replay = replay
            self._task = asyncio.get_running_loop().create_task(self._serve_replay(), name=f"kv-replay-{self.port}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._pub is not None:
            self._pub.close(0)
            self._pub = None
        if self._replay is not None:
            self._replay.close(0)
            self._replay = None

    @property
    def running(self) -> bool:
        return self._pub is not None

    def publish(self, events: list[dict[str, Any]]) -> None:
        if self._pub is None or not events:
            return
        seq = self._seq
        self._seq += 1
        payload = encode_batch(time.time(), events)
        if self.overrun_next:
            self.overrun_next -= 1
            self.dropped += 1
            # Lost from the buffer too: what a replay finds is everything after it.
            return
        self._buffer.append((seq, payload))
        if self.drop_next:
            self.drop_next -= 1
            self.dropped += 1
            return
        try:
            self._pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK)
            self.published += 1
        except zmq.Again:  # over the high-water mark: a PUB socket drops, so do we
            self.dropped += 1

    async def _serve_replay(self) -> None:
        replay = self._replay
        assert replay is not None
        while True:
            frames = await replay.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                continue  # vLLM logs and ignores a malformed request
            client, _, start = frames
            start_seq = int.from_bytes(start, "big")
            self.replays += 1
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await replay.send_multipart((client, b"", self.topic, seq.to_bytes(8, "big"), payload))
            await replay.send_multipart((client, b"", b"", END_SEQ, b""))

    def state(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "replay_endpoint": self.replay_endpoint, "running": self.running,
                "next_seq": self._seq, "published": self.published, "dropped": self.dropped,
                "buffered": len(self._buffer), "buffer_steps": self.buffer_steps, "replays": self.replays,
                "drop_next": self.drop_next, "overrun_next": self.overrun_next}


async def _bind(sock: zmq.Socket[Any], host: str, port: int) -> int:
    if port == 0:
        return sock.bind_to_random_port(f"tcp://{host}")
    # A port just closed by a restart can stay busy for a moment inside libzmq's I/O thread.
    for attempt in range(50):
        try:
            sock.bind(f"tcp://{host}:{port}")
            return port
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or attempt == 49:
                sock.close(0)
                raise OSError(f"cannot bind tcp://{host}:{port} for KV events: {e}") from None
            await asyncio.sleep(0.02)
    raise AssertionError("unreachable")
