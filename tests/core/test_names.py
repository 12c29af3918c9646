"""Branch and reason names: one list in the core, exported to Python, documented in docs/routing.md."""

import json
import re
from pathlib import Path

import kvroute
from kvroute import Rejected, Routed, Router

ROUTING_MD = Path(__file__).resolve().parents[2] / "docs" / "routing.md"


def documented(header: str) -> list[str]:
    """First-column names of the table under 'Every branch and reason' whose header starts with `header`."""
    section = ROUTING_MD.read_text().split("### Every branch and reason", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    names = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.append(re.match(r"\| `([^`]+)` \|", line).group(1))  # type: ignore[union-attr]
    return names


def test_docs_list_every_branch_and_reason() -> None:
    assert documented("branch") == list(kvroute.BRANCHES)
    assert documented("reason") == list(kvroute.REASONS)


def test_names_are_distinct_strings() -> None:
    names = kvroute.BRANCHES + kvroute.REASONS
    assert all(isinstance(n, str) and n for n in names)
    assert len(set(names)) == len(names)


def chat(text: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


def test_decisions_carry_listed_names() -> None:
    r = Router("cost", seed=1)
    assert isinstance(d := r.route(chat("x")), Rejected) and d.reason in kvroute.REASONS
    r.upsert_backend("a", models=["m"])
    r.set_admission("low", max_queue=0)
    assert isinstance(d := r.route(chat("x"), priority="low"), Rejected) and d.reason == "shed"
    for policy in ("round_robin", "random", "least_inflight", "power_of_two", "least_load", "prefix_hash", "session",
                   "pinned"):
        r.set_policy(policy)
        d = r.route(chat(policy), session_key="a" if policy == "pinned" else "s")
        assert isinstance(d, Routed) and d.branch in kvroute.BRANCHES
    counted = set(r.snapshot()["branches"])
    assert counted <= set(kvroute.BRANCHES) | set(kvroute.REASONS) | {"queued"}
