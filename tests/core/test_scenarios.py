"""The two behaviours that justify the core: cost-based routing and priority shedding."""

from __future__ import annotations

import json

from kvroute import Rejected, Routed, Router

LONG_SYSTEM = "You are the support assistant of a large retailer. Follow the policy below. " * 100  # ~7.6 KB


def chat(user: str, system: str = LONG_SYSTEM) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    ).encode()


def routed(d: object) -> Routed:
    assert isinstance(d, Routed), d
    return d


def test_cost_uses_the_cache_at_low_load_and_spreads_when_its_queue_is_long() -> None:
    r = Router("cost", seed=1)
    for i in range(4):
        r.upsert_backend(f"b{i}", models=["m"], waiting=0, running=1, kv_usage=0.2)
    # One backend holds the long shared prefix.
    warm = routed(r.route(chat("first question")))
    r.first_token(warm.ticket, 0.25)
    r.release(warm.ticket, True, warm.prompt_tokens, 0, 20, 1.0)

    # Low load: the request goes where its prefix is cached.
    hit = routed(r.route(chat("second question")))
    assert hit.backend_id == warm.backend_id
    assert hit.branch == "cost:cache_affinity"
    assert hit.cached_tokens > 0.9 * hit.prompt_tokens
    r.release(hit.ticket, True, hit.prompt_tokens, hit.cached_tokens, 20, 1.0)

    # The cached backend's queue grows until recomputing the prefix elsewhere is faster.
    cold_ttft = None
    for waiting in range(0, 200, 4):
        r.upsert_backend(warm.backend_id, waiting=waiting, running=8)
        d = routed(r.route(chat(f"question at queue {waiting}")))
        r.release(d.ticket, True)
        if d.backend_id != warm.backend_id:
            assert d.branch == "cost:load_spread"
            cold_ttft = d.predicted_ttft_s
            break
    assert cold_ttft is not None, "a long enough queue must move the request off the cached backend"

    branches = r.snapshot()["branches"]
    assert branches["cost:cache_affinity"] >= 1
    assert branches["cost:load_spread"] == 1


def test_priority_shedding_under_mixed_overload() -> None:
    r = Router("least_inflight", seed=3)
    for i in range(3):
        r.upsert_backend(f"b{i}")
    r.set_admission("low", max_queue=2)
    r.set_admission("normal", max_queue=5)
    r.set_admission("high", max_queue=8)
    first_shed: dict[str, int] = {}
    tickets = []
    for step in range(120):
        tier = ("low", "normal", "high")[step % 3]
        room_for_high = any(r.in_flight(b) < 8 for b in r.backend_ids())
        d = r.route(chat(f"q{step}", system="short"), priority=tier)  # type: ignore[arg-type]
        if isinstance(d, Rejected):
            assert d.reason == "shed" and d.tier == tier and d.retry_after_s > 0
            first_shed.setdefault(tier, step)
            if tier == "high":
                assert not room_for_high, "high was shed while a backend had room"
        else:
            tickets.append(routed(d).ticket)
        # Some work completes now and then, so the overload is sustained, not a single burst.
        if step % 10 == 9 and tickets:
            r.release(tickets.pop(0), True)
    assert first_shed["low"] < first_shed["normal"] < first_shed["high"]
    tiers = r.snapshot()["tiers"]
    assert tiers["low"]["shed"] > tiers["normal"]["shed"] > tiers["high"]["shed"]
    assert tiers["high"]["admitted"] > tiers["normal"]["admitted"] > tiers["low"]["admitted"]


def test_wait_queue_wakes_by_priority() -> None:
    r = Router("least_inflight", wait_queue_size=4)
    r.upsert_backend("b0")
    for tier in ("high", "normal", "low"):
        r.set_admission(tier, max_queue=1)  # type: ignore[arg-type]
    running = routed(r.route(chat("running", system="s")))
    low = r.route(chat("low", system="s"), priority="low")
    high = r.route(chat("high", system="s"), priority="high")
    assert low.__class__.__name__ == high.__class__.__name__ == "Queued"
    woken = r.release(running.ticket, True)
    assert woken == [high.wait_id]  # type: ignore[union-attr]
    d = routed(r.resume(high.wait_id))  # type: ignore[union-attr]
    assert r.release(d.ticket, True) == [low.wait_id]  # type: ignore[union-attr]
    routed(r.resume(low.wait_id))  # type: ignore[union-attr]
