"""The soak instrument: a short slice of `make soak` runs whole, and its verdicts can fail."""

from __future__ import annotations

import json
from pathlib import Path

from bench import soak
from bench.soak import Sample, Tally, flat


def test_a_short_soak_accounts_for_every_request_and_stays_flat(tmp_path: Path) -> None:
    code = soak.main(["--minutes", "0.4", "--rate", "15", "--sample", "2", "--chaos", "6", "--out", str(tmp_path)])
    (result_file,) = tmp_path.glob("soak-*/result.json")
    result = json.loads(result_file.read_text())
    assert code == 0, result["tally"]["unaccounted"][:5]
    assert result["accounted"] and result["router_alive"] and result["trend"]["ok"]
    assert result["tally"]["sent"] == result["tally"]["ok"] + sum(result["tally"]["classified"].values())
    assert any(e.startswith("restarted backend") for e in result["events"])  # the chaos ran
    assert min(s["tasks"] for s in result["samples"]) > 0


def samples(rss: list[int], fds: int = 30, tasks: int = 40) -> list[Sample]:
    return [Sample(float(t), r, fds, 6, tasks) for t, r in enumerate(rss)]


def test_the_trend_check_catches_growth_and_passes_noise() -> None:
    assert flat(samples([50_000 + (i % 3) * 100 for i in range(12)]), warmup=0)["ok"]
    leak = flat(samples([50_000 + i * 2_000 for i in range(12)]), warmup=0)
    assert not leak["ok"] and leak["rss_kib"]["grew"] > leak["rss_kib"]["allowed"]
    fd_leak = samples([50_000] * 12)
    for i, s in enumerate(fd_leak):
        s.fds = 30 + 5 * i
    assert not flat(fd_leak, warmup=0)["ok"]
    assert not flat(samples([50_000] * 2), warmup=0)["ok"]  # too few samples is no verdict


def test_unaccounted_requests_fail_the_tally() -> None:
    t = Tally(sent=3, ok=2)
    t.unaccounted.append("ServerDisconnectedError")
    assert t.ok + sum(t.classified.values()) != t.sent
