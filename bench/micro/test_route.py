"""route + release through the Python API (the hot path's two crossings), native vs reference.

Run with `make bench-micro`; numbers go to docs/benchmarks.md. Not a test: nothing is asserted
about time.
"""

from __future__ import annotations

import json

import pytest

import kvroute
from kvroute import reference


def test_route_release_native_8k_64_backends(benchmark, native_fleet: kvroute.Router, body_8k: bytes) -> None:
    def once() -> None:
        d = native_fleet.route(body_8k)
        native_fleet.release(d.ticket, True, d.prompt_tokens, d.cached_tokens, 16, 0.5)  # type: ignore[union-attr]

    benchmark(once)
    snap = native_fleet.snapshot()
    benchmark.extra_info["index_pairs"] = snap["index"]["pairs"]
    benchmark.extra_info["index_bytes_per_block"] = round(snap["index"]["bytes_per_block"], 1)


def test_route_release_reference_8k_64_backends(
    benchmark, reference_fleet: reference.Router, body_8k: bytes
) -> None:
    def once() -> None:
        d = reference_fleet.route(body_8k)
        reference_fleet.release(d.ticket, True, d.prompt_tokens, d.cached_tokens, 16, 0.5)  # type: ignore[union-attr]

    benchmark(once)


@pytest.mark.parametrize("kib", [1, 8, 32, 128, 512])
def test_route_release_native_by_body_size(benchmark, kib: int) -> None:
    """How parse+hash time grows with the body (decides where releasing the GIL pays)."""
    r = kvroute.Router("cost")
    for i in range(4):
        r.upsert_backend(f"b{i}")
    text = "lorem ipsum " * (kib * 1024 // 12)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()

    def once() -> None:
        d = r.route(body)
        r.release(d.ticket, True)  # type: ignore[union-attr]

    benchmark(once)


@pytest.mark.parametrize("backends", [4, 64, 256])
def test_route_release_native_by_fleet_size(benchmark, body_8k: bytes, backends: int) -> None:
    """Scoring is O(candidates); the prefix match does not depend on the fleet at all."""
    r = kvroute.Router("cost")
    for i in range(backends):
        r.upsert_backend(f"b{i:03d}")

    def once() -> None:
        d = r.route(body_8k)
        r.release(d.ticket, True)  # type: ignore[union-attr]

    benchmark(once)
