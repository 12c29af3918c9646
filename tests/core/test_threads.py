"""The Router is shared by threads safely, including while bodies are parsed without the GIL."""

from __future__ import annotations

import json
import threading

from kvroute import Routed, Router, reference


def body(i: int, size: int) -> bytes:
    system = f"system {i % 4} " + "shared context words " * (size // 21)
    return json.dumps({"model": "m", "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": f"question {i}"}]}).encode()  # fmt: skip


def test_concurrent_route_and_release_balance_out() -> None:
    r = Router("cost", seed=5)
    for i in range(4):
        r.upsert_backend(f"b{i}")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(200):
                # Every fifth body is large enough (> 32 KiB) to be parsed with the GIL released.
                d = r.route(body(k * 1000 + i, 40_000 if i % 5 == 0 else 2_000))
                assert isinstance(d, Routed)
                r.first_token(d.ticket, 0.05)
                r.release(d.ticket, True, d.prompt_tokens, d.cached_tokens, 8, 0.3)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r.in_flight(b) == 0 for b in r.backend_ids())
    snap = r.snapshot()
    assert snap["in_flight"] == 0
    assert sum(b["completed"] for b in snap["backends"]) == 800


def test_large_bodies_decide_like_the_reference() -> None:
    native, ref = Router("cost", seed=9), reference.Router("cost", seed=9)
    for r in (native, ref):
        for i in range(3):
            r.upsert_backend(f"b{i}")
    for i in range(12):
        b = body(i, 100_000)  # parsed with the GIL released by the native router
        d1, d2 = native.route(b), ref.route(b)
        assert reference.as_tuple(d1) == reference.as_tuple(d2)
        assert isinstance(d1, Routed) and isinstance(d2, reference.RefRouted)
        if i % 2:
            native.release(d1.ticket, True)
            ref.release(d2.ticket, True)
    assert native.snapshot()["branches"] == ref.snapshot()["branches"]
