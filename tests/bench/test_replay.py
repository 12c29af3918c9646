"""Replayed placements: `replay:<contender>` sends every request of a point to the backend that
contender chose for it, through kvroute's own data plane (the `pinned` policy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import replay
from bench.run import configure
from bench.workloads import blog
from kvroute.loadgen import Result

PROJECT = Path(__file__).resolve().parents[2]


def test_placements_are_read_from_the_response_ids() -> None:
    results = [Result(0, response_id="chatcmpl-ab12-sim3"), Result(1, response_id="cmpl-x-sim0"),
               Result(2, response_id="chatcmpl-from-vllm"), Result(3)]
    assert replay.served_by(results) == {0: 3, 1: 0}
    work = replay.pinned(blog("m", 4, seed=0), {0: 1, 2: 0}, ["http://127.0.0.1:9001", "http://127.0.0.1:9002"])
    assert [r.headers.get(replay.PIN_HEADER) for r in work.requests] == ["127.0.0.1:9002", None, "127.0.0.1:9001", None]
    assert work.params["replayed_share"] == 0.5


def test_a_replay_runs_after_its_source_and_needs_it() -> None:
    assert replay.run_order(["replay:smg:least_load", "kvroute:cost", "smg:least_load"]) == \
        ["kvroute:cost", "smg:least_load", "replay:smg:least_load"]
    with pytest.raises(SystemExit):
        configure(["--contenders", "kvroute:cost,replay:smg:least_load"])
    with pytest.raises(ValueError, match="unknown contender"):
        configure(["--contenders", "replay:nginx"])
    with pytest.raises(ValueError, match="not another replay"):
        configure(["--contenders", "replay:replay:kvroute:cost"])


def test_the_replay_sends_each_request_where_its_source_did(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # prefix_hash puts each system prompt on its rendezvous home: placements the replay's fallback
    # (fewest in flight) would not reproduce by chance.
    argv = [sys.executable, "-m", "bench.run", "--suite", "quick", "--out", str(out), "--workloads", "blog",
            "--points", "4", "--time-scale", "8",
            "--contenders", "replay:kvroute:prefix_hash,kvroute:prefix_hash"]
    done = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    source, replayed = json.loads((out / "results.json").read_text())["points"]
    assert source["contender"] == "kvroute:prefix_hash" and replayed["contender"] == "replay:kvroute:prefix_hash"
    assert source["error"] is None and replayed["error"] is None
    assert replayed["params"]["replayed_share"] == 1.0
    assert replayed["decisions"].get("pinned:named") == sum(source["backend"]["requests"]) >= 8
    assert replayed["backend"]["requests"] == source["backend"]["requests"]
    served: dict[str, dict[int, str]] = {}  # contender -> request index -> the instance that served it
    for line in (out / "raw" / "requests.jsonl").read_text().splitlines():
        r = json.loads(line)
        served.setdefault(r["point"].rsplit("/", 1)[1], {})[r["index"]] = r["response_id"].rsplit("-", 1)[1]
    assert len(set(served["kvroute:prefix_hash"].values())) > 1
    assert served["replay:kvroute:prefix_hash"] == served["kvroute:prefix_hash"]
