"""A bounded slice of bench/overhead (`make bench-overhead` runs the whole): the instrument measures
direct, the Python floor and kvroute for each request body, and its numbers are the ones it reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.overhead.run import BODIES, RESULTS


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench-overhead installs it)")
def test_a_short_overhead_run_reports_every_contender_and_body() -> None:
    before = set(RESULTS.glob("overhead-*.json")) if RESULTS.exists() else set()
    done = subprocess.run([sys.executable, "-m", "bench.overhead.run", "--seconds", "1", "--rate", "50",
                           "--sequential", "40", "--peers", ""], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = set(RESULTS.glob("overhead-*.json")) - before
    try:
        report = json.loads(written.read_text())
        assert set(report["results"]) == {"direct", "floor", "kvroute:cost"}
        for name, result in report["results"].items():
            for kind in BODIES:
                seq, rate, load = result[f"{kind}_sequential"], result[f"{kind}_rate"], result[f"{kind}_wrk"]
                assert seq["p50_us"] > 0 and rate["n"] > 0 and load["requests"] > 0, (name, kind)
                assert "failures" not in load, (name, kind, load)
        assert "| kvroute:cost | chat_32k |" in done.stdout  # the table printed is the report's
    finally:
        written.unlink()  # a slice's numbers are not results
