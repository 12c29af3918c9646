"""bench.overhead.ratio: kvroute's cells against the best peer of the same results."""

from __future__ import annotations

import pytest

from bench.overhead.ratio import ratios, render


def row(p50: float, p99: float, rps: float) -> dict:
    return {"chat_rate": {"p50_us": p50, "p99_us": p99}, "chat_wrk": {"req_per_s": rps}}


def test_ratio_to_the_best_peer_per_metric():
    results = {"direct": row(100, 200, 100_000), "kvroute:cost": row(400, 900, 12_000),
               "kvroute:cost:workers=2": row(300, 700, 18_000), "smg:cache_aware": row(450, 800, 8_000),
               "vllm-router:cache_aware": row(420, 950, 9_000), "floor": row(150, 300, 40_000)}
    cells = {c["kvroute"]: c for c in ratios(results)}
    one = cells["kvroute:cost"]
    # Best peer: added p50 320 (vllm-router), p99 800 (smg), 9,000 req/s (vllm-router).
    assert one["ratio_added_p50_us"] == pytest.approx(300 / 320)
    assert one["ratio_p99_us"] == pytest.approx(900 / 800)
    assert one["ratio_req_per_s_per_worker"] == pytest.approx(12_000 / 9_000)
    assert one["ahead_peers"] == ["p99_us"]
    two = cells["kvroute:cost:workers=2"]
    assert two["req_per_s_per_worker"] == 9_000 and two["ahead_peers"] == []
    assert "kvroute:cost:workers=2" in render(list(cells.values()))


def test_no_peer_rows_no_cells():
    assert ratios({"direct": row(1, 2, 3), "kvroute:cost": row(4, 5, 6)}) == []
