"""A real shed in a real core: what the admin tests count (the core owns the shed counters)."""

from __future__ import annotations

from kvroute._native import Router


def shed_one_low(router: Router, model: str = "m") -> None:
    """Have the core refuse one low-priority request (its max_queue 0 sheds every one)."""
    router.set_admission("low", max_queue=0)
    body = b'{"model":"%s","messages":[{"role":"user","content":"hi"}]}' % model.encode()
    decision = router.route(body, "chat", "low", None)
    assert getattr(decision, "reason", None) == "shed", decision
