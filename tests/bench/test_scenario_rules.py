"""The report's pass rules for issue 14's scenarios, on points built by hand: a rule passes only when
cost is level with every contender and the scenario's own placement check holds."""

from __future__ import annotations

from typing import Any

from bench import report


def point(workload: str, contender: str, p50: float, *, repeat: int = 0, requests: list[float] | None = None,
          computed: list[float] | None = None) -> dict[str, Any]:
    backend: dict[str, Any] = {"hit_rate": 0.5, "requests": requests or [25.0, 25.0, 25.0, 25.0]}
    if computed is not None:
        backend["computed_tokens"] = computed
    return {"workload": workload, "mode": "closed", "x": 8.0, "repeat": repeat, "contender": contender,
            "params": {"prefix_tokens": 8192}, "error": None, "backend": backend,
            "summary": {"ttft_p50_s": p50, "ttft_p99_s": 2 * p50, "throughput_rps": 10.0, "errors": 0}}


def verdicts(points: list[dict[str, Any]]) -> list[str]:
    return report.scenario_rules(report.aggregate(points), points)


def test_level_on_every_metric_passes_and_a_slower_p50_fails() -> None:
    level = verdicts([point("hotspot", report.COST, 0.100), point("hotspot", "smg:cache_aware", 0.101)])
    assert level == ["- scenario hotspot, concurrency 8, against 1 contenders: **pass**"]
    slower = verdicts([point("stale", report.COST, 0.120), point("stale", "smg:cache_aware", 0.100)])
    assert len(slower) == 1 and "**fail**: TTFT p50 120.0 vs smg:cache_aware 100.0 ms" in slower[0]


def test_hetero_needs_the_slow_backend_to_get_less_than_its_share() -> None:
    fair = verdicts([point("hetero", report.COST, 0.1), point("hetero", "kvroute:round_robin", 0.1)])
    assert "**fail**" in fair[0] and "got 25% of the requests" in fair[0]
    light = verdicts([point("hetero", report.COST, 0.1, requests=[10.0, 30.0, 30.0, 30.0]),
                      point("hetero", "kvroute:round_robin", 0.1)])
    assert "**pass** (the slow backend got 10%" in light[0]


def test_burst_fails_when_every_backend_prefilled_the_prefix() -> None:
    everywhere = [8300.0, 8400.0, 8250.0, 8500.0]
    spread = verdicts([point("burst", report.COST, 1.0, computed=everywhere), point("burst", "smg:cache_aware", 1.0)])
    assert "**fail**: the prefix was prefilled on 4 of 4 backends" in spread[0]
    together = verdicts([point("burst", report.COST, 1.0, computed=[8300.0, 900.0, 800.0, 700.0]),
                         point("burst", "smg:cache_aware", 1.0)])
    assert "**pass** (the prefix was prefilled on 1 of 4 backends)" in together[0]
    # A run from before the harness counted computed tokens cannot pass.
    old = verdicts([point("burst", report.COST, 1.0), point("burst", "smg:cache_aware", 1.0)])
    assert "older harness" in old[0]


def test_a_run_without_cost_or_without_scenarios_says_nothing() -> None:
    assert verdicts([point("blog", report.COST, 0.1), point("hotspot", "smg:cache_aware", 0.1)]) == []
