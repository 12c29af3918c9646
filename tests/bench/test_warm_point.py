"""A warm point: the workload's system prompts go through the contender once, unmeasured, before the
measured pass, so even a prompt's first measured request finds it cached; the warm-up's requests stay
out of the point's counters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import workloads

PROJECT = Path(__file__).resolve().parents[2]


def test_question_seed_keeps_the_system_prompts_and_changes_the_questions() -> None:
    def texts(w: workloads.Workload, role: int) -> set[str]:
        return {r.body["messages"][role]["content"] for r in w.requests}

    cold, warm = workloads.blog("m", 200, seed=3), workloads.blog("m", 200, seed=3, question_seed=1)
    assert texts(warm, 0) == texts(cold, 0) and len(texts(cold, 0)) == 8
    assert not texts(cold, 1) & texts(warm, 1)
    assert texts(workloads.blog("m", 200, seed=4), 0).isdisjoint(texts(cold, 0))


def test_a_warm_point_starts_on_cached_system_prompts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "bench.run", "--suite", "standard", "--out", str(out), "--workloads", "blog-warm",
            "--points", "1", "--max-requests", "12", "--repeats", "1", "--time-scale", "8",
            "--contenders", "kvroute:cost"]
    done = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (point,) = json.loads((out / "results.json").read_text())["points"]
    assert point["error"] is None and point["params"]["warmup_requests"] == 12
    assert sum(point["backend"]["requests"]) == 12  # the warm-up is not counted
    warmed = {r.tag for r in workloads.blog("m", 12, seed=0, question_seed=1, system_prompts=64).requests}
    firsts: dict[str, dict] = {}
    for line in (out / "raw" / "requests.jsonl").read_text().splitlines():
        record = json.loads(line)
        firsts.setdefault(record["tag"], record)
    assert point["params"]["system_prompts"] == 64
    # A system prompt the warm-up sent is cached on its first measured request; one it did not, is not.
    assert any(r["cached_tokens"] > 900 for tag, r in firsts.items() if tag in warmed)
    assert all(r["cached_tokens"] < 100 for tag, r in firsts.items() if tag not in warmed)
