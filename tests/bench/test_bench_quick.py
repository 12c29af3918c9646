"""The benchmark instrument end to end: simulated fleet + kvroute gateways + load generator + report files.

It runs `python -m bench.run --suite quick` exactly as `make bench-quick` does, cut down by flags to a
few requests so that the test stays small; it checks what the run produced, never how fast it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_quick_suite_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "bench.run", "--suite", "quick", "--out", str(out),
            "--workloads", "blog,trace", "--points", "2", "--max-requests", "4",
            "--contenders", "kvroute:round_robin,kvroute:cost@content_weight=50"]
    done = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]

    data = json.loads((out / "results.json").read_text())
    points = data["points"]
    assert {(p["workload"], p["mode"], p["contender"]) for p in points} == {
        (w, m, c) for w, m in (("blog", "closed"), ("trace", "open"))
        for c in ("kvroute:round_robin", "kvroute:cost@content_weight=50")}
    # The weighted contender's gateway started with its weight (else its points would hold an error).
    (weighted,) = [c for c in data["meta"]["contenders"] if c["name"].endswith("@content_weight=50")]
    assert weighted["flags"][-2:] == ["--policy-weights", "content_weight=50.0"]
    for p in points:
        assert p["error"] is None
        assert p["summary"]["requests"] == 4 and p["summary"]["ok"] == 4, p
        assert p["summary"]["ttft_p50_s"] > 0
        assert p["backend"]["prefix_cache_queries"] > 0
        # Every request was answered by one of the fleet's backends, as the counters show.
        assert sum(p["backend"]["requests"]) == 4
        # Every request carried kvroute's predicted TTFT, set against the measured one.
        cal = p["calibration"]
        assert cal["requests"] == 4 and 0 < cal["ratio_p10"] <= cal["ratio_p50"] <= cal["ratio_p90"], cal
        assert sum(b["requests"] for b in cal["by_branch"].values()) == 4
        if p["contender"] == "kvroute:round_robin":
            assert set(cal["by_branch"]) == {"round_robin"}
        # The core's learned estimates of every backend, read from the admin API after the load.
        assert len(p["learned"]) == 4 and all(v["prefill_tokens_per_s"] > 0 for v in p["learned"].values())
    lines = (out / "raw" / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 16 and all(json.loads(line)["ok"] for line in lines)

    report = (out / "report.md").read_text()
    assert "## blog (closed loop)" in report and "## trace (open loop)" in report
    assert "kvroute:cost" in report and "machine:" in report
    assert "measured ÷ predicted TTFT" in report
    for png in ("blog_closed.png", "trace_open.png", "cache_hit_rate.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
