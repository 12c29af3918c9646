"""The exact cache view: native core and kvroute.reference stay identical under random KV events.

Programs mix, over a few backends, stored runs (on a held parent, on a parent never stored or
already evicted, so orphans occur; re-sent runs; runs that reuse a held hash for other tokens; LoRA
roots; CPU tiers; wrong block sizes), removals (leaf, interior, unknown, CPU), clears, kv_reset,
reset_backend, capacity changes, and token-list requests routed and released in between (so
speculative claims interleave with the engine's word). After every step both must agree on the
decision (every candidate's cached tokens included), each backend's engine hashes and the
snapshot's kv_events and index fields. KVROUTE_FUZZ=long runs 100x the examples (about 3 minutes;
make fuzz runs tests/fuzz only, so run this file with it by hand).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import kvroute
from kvroute import KvrouteError, reference
from kvroute.reference import as_tuple
from tests.fuzz.budget import budget

BT = 4  # block_tokens: small blocks keep token lists short
BACKENDS = ["b0", "b1", "b2"]
MODEL = "m"
LORA = "ad"  # backends serve every model: a request for the adapter roots its chain at it

# A prompt is a path in a small trie: one choice per block. A block's ids depend on its choice and
# depth, so two paths share exactly their common prefix of blocks.
paths = st.lists(st.integers(0, 1), min_size=1, max_size=5)


def block_ids(choice: int, depth: int) -> list[int]:
    return [1000 * choice + 10 * depth + j for j in range(BT)]


def path_ids(path: list[int]) -> list[int]:
    return [t for d, c in enumerate(path) for t in block_ids(c, d)]


def engine_hash(backend: str, path: list[int], lora: str | None, as_bytes: bool) -> int | bytes:
    """The engine's name for the block at the end of `path` (its own hash: arbitrary to the router)."""
    h = reference.xxh3(repr((backend, lora, path)).encode())
    return h.to_bytes(8, "big") * 4 if as_bytes else h  # b2's engine uses sha256-sized bytes hashes


stored_ev = st.tuples(
    st.just("stored"),
    paths,
    # The run starts at this depth (clamped): its parent is the block before, held or not.
    st.sampled_from([0, 0, 0, 1, 1, 2, 3]),
    st.sampled_from([None] * 5 + [LORA]),
    st.sampled_from([None] * 6 + ["GPU", "gpu", "CPU"]),
    st.sampled_from(["ok"] * 8 + ["wrong_size", "short_tokens", "unknown_parent"] + ["reuse_parent", "reuse_sibling"] * 2),
)
removed_ev = st.tuples(
    st.just("removed"),
    paths,
    st.integers(0, 3),  # remove the block at this depth of the path (interior when < len - 1)
    st.sampled_from([None] * 5 + [LORA]),
    st.sampled_from([None, None, None, "CPU"]),
    st.booleans(),  # an unknown hash instead
)
cleared_ev = st.just(("cleared",))
event = st.one_of(stored_ev, stored_ev, removed_ev, cleared_ev)

KV_BACKENDS = ["b0", "b0", "b1", "b2"]  # events concentrate on b0, so deep trees grow there
ops = st.one_of(
    st.tuples(st.just("kv"), st.sampled_from(KV_BACKENDS), st.lists(st.one_of(stored_ev, stored_ev, removed_ev),
                                                                    min_size=1, max_size=4)),  # fmt: skip
    st.tuples(st.just("kv"), st.sampled_from(KV_BACKENDS), st.lists(event, min_size=1, max_size=2)),
    st.tuples(st.just("route"), paths, st.integers(0, BT), st.sampled_from([MODEL, MODEL, LORA])),
    st.tuples(st.just("route"), paths, st.integers(0, BT), st.sampled_from([MODEL, MODEL, LORA])),
    st.tuples(st.just("release"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("kv_reset"), st.sampled_from(BACKENDS)),
    st.tuples(st.just("reset_backend"), st.sampled_from(BACKENDS)),
    st.tuples(st.just("capacity"), st.sampled_from(BACKENDS), st.sampled_from([0, 2, 6])),
    st.tuples(st.just("remove"), st.sampled_from(BACKENDS)),
)


def events_for(backend: str, evs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The vLLM-shaped event tuples both routers take."""
    as_bytes = backend == "b2"
    out: list[tuple[Any, ...]] = []
    for ev in evs:
        if ev[0] == "cleared":
            out.append(("cleared",))
        elif ev[0] == "stored":
            _, path, start, lora, medium, shape = ev
            start = min(start, len(path) - 1)
            hashes = [engine_hash(backend, path[: d + 1], lora, as_bytes) for d in range(start, len(path))]
            parent = engine_hash(backend, path[:start], lora, as_bytes) if start else None
            size, tokens = BT, path_ids(path)[start * BT :]
            if shape == "wrong_size":
                size, tokens = BT + 1, tokens + [7] * len(hashes)
            elif shape == "short_tokens":
                tokens = tokens[:-1]
            elif shape == "reuse_parent" and start:  # a run naming its own ancestor (a cycle)
                hashes[0] = engine_hash(backend, path[:1], lora, as_bytes)
            elif shape == "reuse_sibling":  # a name perhaps held for other tokens (a collision)
                hashes[0] = engine_hash(backend, [*path[:start], 1 - path[start]], lora, as_bytes)
            elif shape == "unknown_parent":
                parent = engine_hash(backend, [9, *path[:start]], lora, as_bytes)
            out.append(("stored", hashes, parent, tokens, size, lora, medium))
        else:
            _, path, depth, lora, medium, unknown = ev
            h = engine_hash(backend, [8] if unknown else path[: min(depth, len(path) - 1) + 1], lora, as_bytes)
            out.append(("removed", [h], medium))
    return out


def call(target: Any, method: str, *args: Any) -> Any:
    try:
        res = getattr(target, method)(*args)
    except KvrouteError as e:
        return ("raised", type(e).__name__)
    if hasattr(res, "ticket") or hasattr(res, "reason") or hasattr(res, "wait_id"):
        return ("ok", as_tuple(res))
    return ("ok", res)


def kv_state(r: Any) -> list[Any]:
    snap = r.snapshot()
    out = []
    for b in snap["backends"]:
        index_blocks = b["index"]["blocks"] if "index" in b else b["index_blocks"]
        out.append((b["id"], b["in_flight"], index_blocks, b["kv_events"], r.kv_engine_hashes(b["id"])))
    return out


def run_both(seed: int, program: list[tuple[Any, ...]]) -> dict[str, int]:
    native = kvroute.Router("cost", block_tokens=BT, seed=seed)
    ref = reference.Router("cost", block_tokens=BT, seed=seed)
    seen: dict[str, int] = {}
    tickets: list[int] = []
    for r in (native, ref):
        for b in BACKENDS:
            r.upsert_backend(b)
    for step, op in enumerate(program):
        kind = op[0]
        both = []
        for r in (native, ref):
            if kind == "kv":
                res = call(r, "kv_apply", op[1], MODEL, events_for(op[1], op[2]))
            elif kind == "route":
                _, path, tail, model = op
                ids = path_ids(path) + list(range(50_000, 50_000 + tail))
                body = reference.raw({"model": model, "prompt": ids, "max_tokens": 4})
                res = call(r, "route", body, "completions")
            elif kind == "release":
                t = tickets[op[1] % len(tickets)] if tickets else 10_000
                res = call(r, "release", t, op[2], 0, 0, 0, 0.0)
            elif kind == "capacity":  # num_gpu_blocks x block_size / BT: a small cap evicts claims
                if op[2] == 0:
                    res = call(r, "upsert_backend", op[1])
                else:
                    r.upsert_backend(op[1], num_gpu_blocks=op[2], block_size=BT)
                    res = ("ok", None)
            elif kind == "remove":
                res = call(r, "remove_backend", op[1])
                if res[0] == "ok":
                    r.upsert_backend(op[1])  # back at once, as a new backend: no events yet
            else:
                res = call(r, kind, op[1])
            both.append(res)
        assert both[0] == both[1], f"step {step}: {op}"
        assert native.snapshot()["last_decision"] == ref.snapshot()["last_decision"], f"step {step}: {op}"
        assert kv_state(native) == kv_state(ref), f"step {step}: {op}"
        res = both[0]
        if kind == "route" and res[0] == "ok" and res[1][0] == "routed":
            tickets.append(res[1][1])
            seen["cached"] = seen.get("cached", 0) + (res[1][8] > 0)
        if kind == "release" and res[0] == "ok":
            tickets.remove(tickets[op[1] % len(tickets)])
    for b in kv_state(native):
        ev = b[3] or {}
        for k in ("orphans", "unknown_removals", "block_size_mismatch", "other_medium", "removed", "resets"):
            seen[k] = seen.get(k, 0) + ev.get(k, 0)
    return seen


@budget(300)
@given(seed=st.integers(0, 2**64 - 1), program=st.lists(ops, min_size=5, max_size=60))
def test_native_and_reference_keep_the_same_cache_view(seed: int, program: list[tuple[Any, ...]]) -> None:
    run_both(seed, program)


def test_a_fixed_program_reaches_every_rule() -> None:
    """The counters the random programs are compared on do move (the comparison is not vacuous)."""
    program: list[tuple[Any, ...]] = [
        ("kv", "b0", [("stored", [0, 1, 2], 0, None, None, "ok")]),
        ("route", [0, 1, 2], 1, MODEL),  # all 3 blocks confirmed on b0
        ("route", [0, 1, 2, 1], 0, MODEL),  # 3 credited: never the last token's block
        ("kv", "b0", [("stored", [0, 1, 2, 0], 3, None, None, "unknown_parent")]),  # orphan
        ("kv", "b0", [("removed", [0, 1, 2], 1, None, None, False)]),  # interior: takes block 2 along
        ("kv", "b0", [("removed", [0, 1, 2], 2, None, None, False)]),  # already gone: unknown
        ("kv", "b1", [("stored", [1], 0, None, None, "wrong_size"), ("stored", [1], 0, None, "CPU", "ok")]),
        ("kv_reset", "b1"),
        ("kv", "b2", [("stored", [2, 2], 0, LORA, "GPU", "ok"), ("stored", [2, 0], 1, LORA, None, "reuse_parent")]),
        ("route", [2, 2, 2], 0, LORA),
        ("release", 0, True),
        ("reset_backend", "b0"),
        ("release", 0, False),
    ]
    seen = run_both(0, program)
    for k in ("cached", "orphans", "unknown_removals", "block_size_mismatch", "other_medium", "removed", "resets"):
        assert seen.get(k, 0) > 0, (k, seen)


def test_the_size_bound_resets_the_view_alike() -> None:
    # The bound is 4x the engine's KV size in blocks, at least 65 536 (an engine with 100 blocks
    # here): one run longer than that and the view starts over, unconfirmed.
    for n, reset in ((reference.DEFAULT_CAPACITY_BLOCKS, False), (reference.DEFAULT_CAPACITY_BLOCKS + 1, True)):
        native = kvroute.Router("cost", block_tokens=1)
        ref = reference.Router("cost", block_tokens=1)
        ids = list(range(n))
        for r in (native, ref):
            r.upsert_backend("b0", num_gpu_blocks=100, block_size=1)
            r.kv_apply("b0", MODEL, [("stored", list(range(1, n + 1)), None, ids, 1, None, None)])
        assert kv_state(native) == kv_state(ref)
        ev = kv_state(native)[0][3]
        assert (ev["resets"], ev["confirmed"], ev["engine_blocks"]) == ((1, False, 0) if reset else (0, True, n))
