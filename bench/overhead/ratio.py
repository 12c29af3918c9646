"""kvroute against the best peer gateway of the same runs, per body: the regression guard of issue 16.

    python -m bench.overhead.ratio bench/results/overhead/overhead-A.json [overhead-B.json ...]

For each body (chat, stream, chat_32k) and each kvroute row (one worker, and `workers=N` per
worker), the ratio to the best peer (sglang, smg, vllm-router rows of the same runs) of:
- added p50 at the fixed rate (the row's p50 less direct's), lower is better;
- p99 at the fixed rate, lower is better;
- saturated throughput (wrk) per worker process, higher is better.
A latency ratio above 1, or a throughput ratio below 1, is a cell where a peer is ahead. Several
runs are merged cell by cell by their median first (bench.overhead.summary), since one run on a
shared machine is noise. `--json` prints the cells as JSON instead of a table.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from bench.overhead.summary import merge

PEER_KINDS = ("sglang", "smg", "vllm-router")
_WORKERS = re.compile(r":workers=(\d+)$")


def _workers(name: str) -> int:
    found = _WORKERS.search(name)
    return int(found.group(1)) if found else 1


def _metrics(results: dict[str, Any], name: str, body: str) -> dict[str, float] | None:
    row, direct = results.get(name, {}), results.get("direct", {})
    rate, wrk, base = row.get(f"{body}_rate"), row.get(f"{body}_wrk"), direct.get(f"{body}_rate")
    if not rate or not wrk or not base:
        return None
    return {"added_p50_us": rate["p50_us"] - base["p50_us"], "p99_us": rate["p99_us"],
            "req_per_s_per_worker": wrk["req_per_s"] / _workers(name)}


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    bodies = sorted({part.rsplit("_", 1)[0] for row in results.values() for part in row})
    peers = [name for name in results if name.split(":", 1)[0] in PEER_KINDS]
    ours = [name for name in results if name.startswith("kvroute:")]
    cells = []
    for body in bodies:
        theirs = {name: m for name in peers if (m := _metrics(results, name, body)) is not None}
        if not theirs:
            continue
        best = {"added_p50_us": min(m["added_p50_us"] for m in theirs.values()),
                "p99_us": min(m["p99_us"] for m in theirs.values()),
                "req_per_s_per_worker": max(m["req_per_s_per_worker"] for m in theirs.values())}
        for name in ours:
            mine = _metrics(results, name, body)
            if mine is None:
                continue
            cell = {"body": body, "kvroute": name}
            for key, value in mine.items():
                # An added p50 at or below 0 (kvroute as fast as direct) counts as level with any peer.
                cell[key] = value
                cell[f"best_peer_{key}"] = best[key]
                cell[f"ratio_{key}"] = value / best[key] if best[key] > 0 else (0.0 if value <= 0 else float("inf"))
            cell["ahead_peers"] = [key for key in mine if (cell[f"ratio_{key}"] < 1.0 if key.startswith("req")
                                                           else cell[f"ratio_{key}"] > 1.0)]
            cells.append(cell)
    return cells


def render(cells: list[dict[str, Any]]) -> str:
    lines = ["| body | kvroute | added p50 @rate (best peer) | ratio | p99 @rate (best peer) | ratio "
             "| wrk req/s per worker (best peer) | ratio |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(
            f"| {c['body']} | {c['kvroute']} | {c['added_p50_us']:.0f} µs ({c['best_peer_added_p50_us']:.0f}) "
            f"| {c['ratio_added_p50_us']:.2f} | {c['p99_us']:.0f} µs ({c['best_peer_p99_us']:.0f}) "
            f"| {c['ratio_p99_us']:.2f} | {c['req_per_s_per_worker']:,.0f} ({c['best_peer_req_per_s_per_worker']:,.0f}) "
            f"| {c['ratio_req_per_s_per_worker']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    paths = [Path(a) for a in args if a != "--json"]
    if not paths:
        raise SystemExit("usage: python -m bench.overhead.ratio [--json] RESULT.json [RESULT.json ...]")
    cells = ratios(merge([json.loads(p.read_text()) for p in paths]))
    print(json.dumps(cells, indent=2) if as_json else render(cells))


if __name__ == "__main__":
    main()
