"""One ZMQ subscriber per backend for vLLM's KV events, handing decoded events to a sink.

vLLM publishes each scheduler step's cache changes as one batch on a PUB socket, numbered from 0
by the publisher process (vllm/distributed/kv_events.py). Per backend:

- the next number: the batch's events go to `sink.apply(backend_id, events)`;
- a later number (a gap: the SUB socket dropped batches, or we joined late): the missed batches
  are asked of the publisher's replay endpoint (ROUTER: send [b"", start_seq], read
  [b"", topic, seq, payload] messages up to the end marker seq -1) and applied in order;
- the backend went down (`reset`, called by the feed when its health checks fail): vLLM
  publishes nothing until its engine next steps, so a restarted engine's empty cache would show
  only with its first request; its view is dropped at once instead, and rebuilt as below;
- a gap the replay cannot fill (no replay endpoint, timeout, or its buffer no longer reaches back
  far enough), or a number not above the last one (the publisher restarted, so the engine's cache
  is new): `sink.reset(backend_id)`, the sink forgets that backend, and the backend is unconfirmed
  until the next batch is applied. After a restart the new publisher's batches are taken from 0
  (replayed when the first ones were missed).

A sink must not block: it is called on the event loop. The view a sink builds is only as
complete as the events: a publisher that restarts after publishing fewer batches than the last
one we saw is indistinguishable from a gap (vLLM's protocol carries no publisher identity).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence
from urllib.parse import urlsplit

import zmq
import zmq.asyncio

from .kv_decode import Batch, Event, decode_batch

log = logging.getLogger("kvroute.kv_events")

END_SEQ = (1 << 64) - 1  # -1 as 8 signed bytes, read unsigned
MAX_REPLAY_BATCHES = 1_000_000  # a publisher that never sends the end marker cannot keep us forever


class KVEventSink(Protocol):
    def apply(self, backend_id: str, events: Sequence[Event]) -> None:
        """The events of one batch, in order."""

    def reset(self, backend_id: str) -> None:
        """Forget everything known of this backend's cache: what follows starts from empty."""


@dataclass
class BackendEvents:
    """Per-backend subscriber state, as the admin view shows it."""

    backend_id: str
    endpoint: str
    replay_endpoint: str | None
    last_seq: int = -1
    confirmed: bool = False
    batches: int = 0
    events: int = 0
    gaps: int = 0
    gaps_recovered: int = 0
    replayed_batches: int = 0
    replay_failures: int = 0
    resets: int = 0
    restarts: int = 0
    decode_errors: int = 0
    last_batch_ts: float | None = None
    event_lag_s: float | None = None  # our clock at receipt less the batch's own timestamp

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def endpoints_for(backend_url: str, endpoints: dict[str, str], replay_endpoints: dict[str, str],
                  port_offset: int = 0, replay_port_offset: int = 0, port: int = 0,
                  replay_port: int = 0) -> tuple[str | None, str | None]:
    """A backend's (KV event endpoint, replay endpoint): named for its URL, else one port on the
    backend's host (`port`), else the offset rule (tcp://<backend host>:<backend port + offset>);
    0 means no rule."""
    key = backend_url.rstrip("/")
    named = {k.rstrip("/"): v for k, v in endpoints.items()}
    named_replay = {k.rstrip("/"): v for k, v in replay_endpoints.items()}
    parts = urlsplit(key)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    http_port = parts.port or (443 if parts.scheme == "https" else 80)

    def rule(fixed: int, offset: int) -> str | None:
        if fixed:
            return f"tcp://{host}:{fixed}"
        return f"tcp://{host}:{http_port + offset}" if offset else None

    endpoint = named.get(key) or rule(port, port_offset)
    replay = named_replay.get(key) or rule(replay_port, replay_port_offset)
    if endpoint is None:
        return None, None
    return endpoint, replay


class KVEventSubscriber:
    """`add(backend_id, endpoint, replay_endpoint)` starts a subscription task on the running loop;
    `remove` and `close` end them. `states()` is the admin view."""

    def __init__(self, sink: KVEventSink, replay_timeout: float = 2.0, topic: bytes = b"") -> None:
        self.sink = sink
        self.replay_timeout = replay_timeout
        self.topic = topic
        self._ctx = zmq.asyncio.Context.instance()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._state: dict[str, BackendEvents] = {}

    def add(self, backend_id: str, endpoint: str, replay_endpoint: str | None = None) -> None:
        if backend_id in self._tasks:
            return
        st = self._state[backend_id] = BackendEvents(backend_id, endpoint, replay_endpoint)
        self._tasks[backend_id] = asyncio.get_running_loop().create_task(
            self._run(st), name=f"kv-events-{backend_id}")

    async def remove(self, backend_id: str) -> None:
        task = self._tasks.pop(backend_id, None)
        self._state.pop(backend_id, None)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def close(self) -> None:
        for backend_id in list(self._tasks):
            await self.remove(backend_id)

    def states(self) -> dict[str, dict[str, Any]]:
        return {b: st.as_dict() for b, st in self._state.items()}

    def reset(self, backend_id: str) -> None:
        """The engine may have restarted (it went down): forget its view and its sequence, so the
        next batch rebuilds from scratch: a new publisher's first batches apply as they come, and a
        publisher that lived on is a gap from 0, filled from its replay buffer."""
        st = self._state.get(backend_id)
        if st is not None:
            self._reset(st)

    def state(self, backend_id: str) -> BackendEvents:
        return self._state[backend_id]

    async def _run(self, st: BackendEvents) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        sub.connect(st.endpoint)  # ZMQ reconnects by itself while the publisher is down
        try:
            while True:
                frames = await sub.recv_multipart()
                try:
                    await self._on_message(st, frames)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a sink's bug must not end the subscription; it is counted and logged
                    st.decode_errors += 1
                    log.exception("kv events from %s: handling a batch failed", st.backend_id)
        finally:
            sub.close(0)

    async def _on_message(self, st: BackendEvents, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8:
            st.decode_errors += 1
            return
        seq = int.from_bytes(frames[1], "big")
        if seq <= st.last_seq:
            # A new publisher process: its engine's cache started empty, and so do we.
            st.restarts += 1
            self._reset(st)
        if seq > st.last_seq + 1:
            st.gaps += 1
            if await self._replay(st, st.last_seq + 1, seq):
                st.gaps_recovered += 1
            else:
                st.replay_failures += 1
                self._reset(st)
        self._apply(st, seq, frames[2])

    def _reset(self, st: BackendEvents) -> None:
        self.sink.reset(st.backend_id)
        st.resets += 1
        st.confirmed = False
        st.last_seq = -1

    def _apply(self, st: BackendEvents, seq: int, payload: bytes) -> None:
        batch: Batch = decode_batch(payload)
        st.last_seq = seq
        st.batches += 1
        st.decode_errors += batch.errors
        if batch.ts is not None:
            st.last_batch_ts = batch.ts
            st.event_lag_s = max(0.0, time.time() - batch.ts)
        if batch.events:
            st.events += len(batch.events)
            self.sink.apply(st.backend_id, batch.events)
        st.confirmed = True

    async def _replay(self, st: BackendEvents, start: int, until: int) -> bool:
        """Apply batches start..until-1 from the replay endpoint; False when they cannot all be had."""
        if st.replay_endpoint is None:
            return False
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(st.replay_endpoint)
        try:
            return await asyncio.wait_for(self._read_replay(st, dealer, start, until), self.replay_timeout)
        except (asyncio.TimeoutError, zmq.ZMQError):
            return False
        finally:
            dealer.close(0)

    async def _read_replay(self, st: BackendEvents, dealer: zmq.asyncio.Socket, start: int, until: int) -> bool:
        await dealer.send_multipart([b"", start.to_bytes(8, "big")])
        for _ in range(MAX_REPLAY_BATCHES):
            frames = await dealer.recv_multipart()
            # [b"", topic, seq, payload] from vLLM 0.32; [b"", seq, payload] before it.
            if frames and frames[0] == b"":
                frames = frames[1:]
            if len(frames) == 3:
                frames = frames[1:]
            if len(frames) != 2 or len(frames[0]) != 8:
                st.decode_errors += 1
                return False
            seq = int.from_bytes(frames[0], "big")
            if seq == END_SEQ:
                return st.last_seq >= until - 1
            if seq <= st.last_seq or seq >= until:
                continue  # already applied, or live batches the SUB socket delivers
            if seq != st.last_seq + 1:
                return False  # the buffer starts after what we need: it has overrun
            st.replayed_batches += 1
            self._apply(st, seq, frames[1])
        return False


__all__ = ["BackendEvents", "KVEventSink", "KVEventSubscriber", "endpoints_for"]
