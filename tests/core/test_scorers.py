"""Policies composed from named scorers: the weighted policy, each decision's raw scorer values."""

from __future__ import annotations

import json

import pytest

import kvroute
from kvroute import InvalidConfig, Routed, Router, UnknownTicket, UnknownWait

SYSTEM = "You are the support assistant of a large retailer. Follow the policy below. " * 60


def chat(user: str) -> bytes:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return json.dumps({"model": "m", "messages": msgs}).encode()


def routed(d: object) -> Routed:
    assert isinstance(d, Routed), d
    return d


def fleet(policy: str, **weights: float) -> Router:
    r = Router(policy, seed=3)
    r.set_policy(policy, **weights)
    for b in ("a", "b", "c"):
        r.upsert_backend(b, models=["m"])
    return r


def test_weighted_prefix_keeps_affinity_and_least_load_breaks_it_under_queue() -> None:
    r = fleet("weighted")  # prefix 1, least_load 1.5: affinity holds up to 3x the least load
    home = routed(r.route(chat("first"))).backend_id
    # Low load: the backend holding the prefix wins (one request more: twice the least load).
    again = routed(r.route(chat("second")))
    assert again.backend_id == home and again.branch == "weighted"
    # A deep queue on the home backend: with the prefix weighted far above load, affinity holds...
    r.upsert_backend(home, waiting=50)
    r.set_policy("weighted", prefix=20.0, least_load=1.0)
    assert routed(r.route(chat("third"))).backend_id == home
    # ... with the defaults, least load outweighs the prefix.
    r.set_policy("weighted")
    assert routed(r.route(chat("fourth"))).backend_id != home


def test_weighted_with_only_least_load_ignores_the_cache() -> None:
    r = fleet("weighted", prefix=0.0, least_load=1.0)
    home = routed(r.route(chat("first"))).backend_id
    r.upsert_backend(home, waiting=5)
    for i in range(4):
        assert routed(r.route(chat(f"q{i}"))).backend_id != home


def test_last_decision_reports_every_scorer_raw() -> None:
    r = fleet("weighted", prefix=1.0, least_load=1.5, least_inflight=0.1, cost=0.1)
    assert r.snapshot()["last_decision"] is None
    first = routed(r.route(chat("first")))
    second = routed(r.route(chat("second")))
    last = r.snapshot()["last_decision"]
    assert last["outcome"] == "weighted" and last["policy"] == "weighted"
    by_id = {c["backend"]: c for c in last["candidates"]}
    assert set(by_id) == {"a", "b", "c"}
    assert [c["backend"] for c in last["candidates"] if c["chosen"]] == [second.backend_id]
    home = by_id[first.backend_id]
    assert set(home["scores"]) == set(kvroute.SCORERS)
    assert home["scores"]["prefix"] == pytest.approx(home["cached_tokens"] / second.prompt_tokens)
    assert home["scores"]["prefix"] > 0.9
    assert home["scores"]["least_inflight"] == 1.0
    assert home["scores"]["ttft"] == pytest.approx(second.predicted_ttft_s)
    others = [c for c in last["candidates"] if c["backend"] != first.backend_id]
    assert all(c["scores"]["prefix"] == 0.0 and c["scores"]["least_inflight"] == 0.0 for c in others)


def test_each_policy_reports_its_own_scorers() -> None:
    expect = {"round_robin": set(), "least_load": {"least_load"}, "cost": {"cost", "externality"}, "session": {"least_inflight"}}
    for policy, scorers in expect.items():
        r = fleet(policy)
        routed(r.route(chat("x")))
        cands = r.snapshot()["last_decision"]["candidates"]
        assert all(set(c["scores"]) == scorers | {"ttft"} for c in cands), policy


def test_a_shed_decision_keeps_its_candidates_and_a_filtered_one_has_none() -> None:
    r = fleet("cost")
    r.set_admission("low", max_queue=0)
    assert r.route(chat("x"), "chat", "low").reason == "shed"  # type: ignore[union-attr]
    last = r.snapshot()["last_decision"]
    assert last["outcome"] == "shed" and len(last["candidates"]) == 3
    assert not any(c["chosen"] for c in last["candidates"])
    r.route(json.dumps({"model": "nope", "prompt": "x"}).encode(), "completions")
    assert r.snapshot()["last_decision"] == {"outcome": "unknown_model", "policy": "cost", "candidates": []}
    r.remove_backend("a")
    assert r.snapshot()["last_decision"] is None


def test_exported_names() -> None:
    assert kvroute.SCORERS == ("ttft", "cost", "externality", "prefix", "least_load", "least_inflight")
    assert "weighted" in kvroute.POLICIES and "weighted" in kvroute.BRANCHES
    assert Router("weighted").policy() == (
        "weighted", {"prefix": 1.0, "least_load": 1.5, "least_inflight": 0.0, "cost": 0.0}
    )


@pytest.mark.parametrize("value", ["2", None, [1.0], {"a": 1}])
def test_a_weight_that_is_not_a_number_is_a_config_error(value: object) -> None:
    r = Router()
    with pytest.raises(InvalidConfig, match="must be a number"):
        r.set_policy("cost", kv_weight=value)  # type: ignore[arg-type]
    assert r.policy()[1]["kv_weight"] == 0.5


def test_wait_ids_have_their_own_error() -> None:
    r = Router(wait_queue_size=2)
    r.upsert_backend("a")
    r.set_admission("normal", max_queue=0)
    q = r.route(chat("x"))
    assert hasattr(q, "wait_id")
    r.cancel_wait(q.wait_id)  # type: ignore[union-attr]
    with pytest.raises(UnknownWait):
        r.cancel_wait(q.wait_id)  # type: ignore[union-attr]
    with pytest.raises(UnknownWait):
        r.resume(q.wait_id)  # type: ignore[union-attr]
    assert not issubclass(UnknownWait, UnknownTicket)
