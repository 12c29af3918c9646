"""Fleets for the micro benchmarks: 64 backends whose prefix indexes each hold 100,000 blocks."""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Iterator

import pytest

import kvroute
from kvroute import reference

BACKENDS = 64
BLOCKS_PER_BACKEND = 100_000
BODY_BYTES = 8 * 1024


def chat_body(system: str, user: str) -> bytes:
    return json.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "system", "content": system},
                                                    {"role": "user", "content": user}]}  # fmt: skip
    ).encode()


def filler(rng: random.Random, n: int) -> str:
    words = ["cache", "token", "prefill", "decode", "router", "backend", "queue", "latency", "block", "model"]
    out, size = [], 0
    while size < n:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n]


@pytest.fixture(scope="session")
def body_8k() -> bytes:
    rng = random.Random(42)
    b = chat_body(filler(rng, 6 * 1024), filler(rng, 2 * 1024 - 120))
    assert 8000 <= len(b) <= 8400, len(b)
    return b


@pytest.fixture(scope="session")
def native_fleet(body_8k: bytes) -> Iterator[kvroute.Router]:
    """Fill each backend's index to 100k blocks by routing unique 8 KiB bodies round-robin."""
    r = kvroute.Router("round_robin")
    for i in range(BACKENDS):
        r.upsert_backend(f"b{i:02d}", models=["m"], num_gpu_blocks=BLOCKS_PER_BACKEND, block_size=16)
    rng = random.Random(7)
    text = filler(rng, BODY_BYTES)
    i = 0
    while True:
        blocks = r.snapshot()["backends"][-1]["index"]["blocks"] if i % (BACKENDS * 50) == 0 else 0
        if blocks >= BLOCKS_PER_BACKEND:
            break
        # A unique leading tag makes every block of every body unique.
        d = r.route(chat_body(f"{i:09d} " + text[:6000], text[6000:8000]))
        assert isinstance(d, kvroute.Routed)
        r.release(d.ticket, True)
        i += 1
    r.set_policy("cost")
    d = r.route(body_8k)  # the benchmarked prefix is cached on one backend
    assert isinstance(d, kvroute.Routed)
    r.release(d.ticket, True)
    yield r


@pytest.fixture(scope="session")
def reference_fleet(body_8k: bytes) -> Iterator[reference.Router]:
    """Same fleet shape; indexes filled directly (routing 50k bodies through Python takes minutes)."""
    r = reference.Router("cost")
    for i in range(BACKENDS):
        r.upsert_backend(f"b{i:02d}", models=["m"], num_gpu_blocks=BLOCKS_PER_BACKEND, block_size=16)
    for k, b in enumerate(r.backends.values()):
        b.index = OrderedDict.fromkeys(range(k * BLOCKS_PER_BACKEND, (k + 1) * BLOCKS_PER_BACKEND))
    d = r.route(body_8k)
    assert isinstance(d, reference.RefRouted)
    r.release(d.ticket, True)
    yield r
