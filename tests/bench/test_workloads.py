"""Workloads are deterministic, have the shapes they claim, and the trace keeps its prefix sharing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import workloads
from kvroute.sim.tokenizer import HashTokenizer


def _bodies(w: workloads.Workload) -> list[str]:
    return [json.dumps(r.body, sort_keys=True) for r in w.requests]


def test_same_seed_same_requests_other_seed_other_text() -> None:
    assert _bodies(workloads.blog("m", 20, seed=3)) == _bodies(workloads.blog("m", 20, seed=3))
    assert _bodies(workloads.blog("m", 20, seed=3)) != _bodies(workloads.blog("m", 20, seed=4))
    assert _bodies(workloads.gsp("m", scale=0.1)) == _bodies(workloads.gsp("m", scale=0.1))
    assert _bodies(workloads.multiturn("m", conversations=5, turns=3)) == _bodies(
        workloads.multiturn("m", conversations=5, turns=3))


def test_blog_shape() -> None:
    w = workloads.blog("m", 40, system_prompts=3, system_tokens=1000)
    tok = HashTokenizer()
    systems = {r.body["messages"][0]["content"] for r in w.requests}
    assert len(systems) == 3
    assert all(abs(len(tok.encode(s)) - 1000) <= 10 for s in systems)  # a short header aside, a word a token
    assert all(r.endpoint == "chat" and r.body["max_tokens"] == 64 and r.body["ignore_eos"] for r in w.requests)


def test_hot_spot_gives_one_system_prompt_its_share() -> None:
    w = workloads.blog("m", 1000, system_prompts=8, system_tokens=50, hot_share=0.9)
    tags = [r.tag for r in w.requests]
    assert 0.87 <= tags.count("sys0") / len(tags) <= 0.93
    assert len(set(tags)) == 8 and w.params["hot_share"] == 0.9
    # Without it, the blog experiment is as it was: the same requests for the same seed.
    assert _bodies(workloads.blog("m", 20, seed=3)) == _bodies(workloads.blog("m", 20, seed=3, hot_share=None))
    assert workloads.hotspot("m", 10, hot_share=0.9, system_tokens=50).name == "hotspot"
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="hot_share"):
            workloads.blog("m", 5, hot_share=bad)


def test_burst_arrives_at_once_on_one_new_prefix() -> None:
    w = workloads.burst("m", 200, prefix_tokens=8192)
    tok = HashTokenizer()
    systems = {r.body["messages"][0]["content"] for r in w.requests}
    assert len(w.requests) == 200 and w.arrivals == [0.0] * 200 and len(systems) == 1
    assert abs(len(tok.encode(systems.pop())) - 8192) <= 10
    assert len({r.body["messages"][1]["content"] for r in w.requests}) > 190  # questions differ
    # Another seed, another prefix: a repeat of the scenario finds no cache from the last one.
    assert workloads.burst("m", 2, seed=1).requests[0].body["messages"][0] != w.requests[0].body["messages"][0]


def test_gsp_scaled_down() -> None:
    w = workloads.gsp("m", scale=0.25)
    assert w.params["groups"] == 16 and len(w.requests) == 16 * 16
    assert w.params["system_tokens"] == 512 and w.params["output_tokens"] == 64
    assert len({r.tag for r in w.requests[:16]}) > 1  # shuffled: a group's prompts are spread out


def test_multiturn_each_turn_extends_the_last() -> None:
    w = workloads.multiturn("m", conversations=3, turns=4)
    by_conv: dict[str, list[list[dict[str, str]]]] = {}
    for r in w.requests:
        by_conv.setdefault(r.tag.split("t")[0], []).append(r.body["messages"])
    for turns in by_conv.values():
        assert len(turns) == 4
        for earlier, later in zip(turns, turns[1:]):
            assert later[: len(earlier)] == earlier and len(later) == len(earlier) + 2


def test_trace_blocks_share_text_as_ids_share(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 0, "input_length": 1200, "output_length": 10, "hash_ids": [1, 2, 3]},
        {"timestamp": 500, "input_length": 700, "output_length": 20, "hash_ids": [1, 2]},
        {"timestamp": 1500, "input_length": 100, "output_length": 5, "hash_ids": [9]},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = workloads.trace("m", path=path, length_scale=0.5, speedup=10)
    tok = HashTokenizer()
    prompts = [tok.encode(r.body["prompt"]) for r in w.requests]
    assert [len(p) for p in prompts] == [600, 350, 50]
    assert prompts[1] == prompts[0][:350]  # ids 1, 2 (the second block cut) are the first request's start
    assert prompts[2][:10] != prompts[0][:10]
    assert [r.body["max_tokens"] for r in w.requests] == [5, 10, 2]
    assert w.arrivals == [0.0, 0.05, 0.15]
    assert w.params["ideal_hit_rate"] == round(2 / 6, 3)
    assert w.params["block_tokens"] == 256


def test_mooncake_trace_is_read_in_place() -> None:
    w = workloads.trace("m", limit=5, length_scale=1 / 16)
    assert workloads.MOONCAKE_TRACE.parent.name == "workloads" and len(w.requests) == 5


def test_a_window_past_the_trace_end_is_refused() -> None:
    with pytest.raises(ValueError, match="no request at or after number 100000"):
        workloads.trace("m", start=100_000, limit=5)
