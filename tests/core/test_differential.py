"""The native core and kvroute.reference make the same decisions for the same calls (same seed)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvroute
from kvroute import KvrouteError, reference
from kvroute.reference import as_tuple

SYSTEMS = ["", "Be brief.", "You are a careful assistant. " * 40, "Answer in French, citing sources. " * 100]
USERS = ["hi", "What is the capital of France?", "Explain KV caches " * 30, "and then?", "x" * 700]
MODELS = ["m", "other"]
BACKENDS = ["b0", "b1", "b2", "b3", "b4"]
POLICIES = list(reference.POLICY_WEIGHTS)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def chat_body(conv: int, turns: int, model: str, tools: bool) -> bytes:
    msgs: list[dict[str, Any]] = []
    if SYSTEMS[conv % len(SYSTEMS)]:
        msgs.append({"role": "system", "content": SYSTEMS[conv % len(SYSTEMS)]})
    for t in range(turns + 1):
        msgs.append({"role": "user", "content": USERS[(conv + t) % len(USERS)]})
        if t < turns:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"answer {t}"}]})
    body: dict[str, Any] = {"model": model, "messages": msgs, "stream": conv % 2 == 0}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    return dumps(body)


def other_body(kind: int, n: int, model: str) -> tuple[bytes, str]:
    if kind == 0:
        return dumps({"model": model, "prompt": list(range(n * 7)), "max_tokens": n}), "completions"
    if kind == 1:
        return dumps({"model": model, "prompt": USERS[n % len(USERS)] * 3}), "completions"
    if kind == 2:
        return dumps({"model": model, "input": USERS[n % len(USERS)]}), "embeddings"
    body = {"model": model, "instructions": SYSTEMS[n % len(SYSTEMS)] or None,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": USERS[n % len(USERS)]}]},
                      {"type": "function_call_output", "call_id": "c", "output": "42"}]}  # fmt: skip
    return dumps(body), "responses"


backend_fields = st.fixed_dictionaries(
    {},
    optional={
        "models": st.sampled_from([[], ["m"], ["other"], ["m", "other"]]),
        "healthy": st.booleans(),
        "draining": st.booleans(),
        "circuit_open": st.booleans(),
        "waiting": st.integers(0, 60),
        "running": st.integers(0, 30),
        "kv_usage": st.floats(0.0, 1.0),
        "num_gpu_blocks": st.integers(0, 400),
        "block_size": st.sampled_from([0, 16, 32]),
    },
)

chat_op = st.tuples(
    st.just("chat"),
    st.integers(0, 7),
    st.integers(0, 3),
    st.sampled_from(["m", "m", "m", "other"]),
    st.booleans(),
    st.sampled_from(kvroute.reference.TIERS),
    st.sampled_from([None, "alice", "bob", "carol", "b1", "b3"]),  # backend ids: what `pinned` reads
    st.lists(st.sampled_from(BACKENDS), max_size=1),
)
# Routes dominate (as in production), so programs reach cache hits, queues and shedding.
other_ops = st.one_of(
    st.tuples(st.just("upsert"), st.sampled_from(BACKENDS), backend_fields),
    st.tuples(st.just("other"), st.integers(0, 3), st.integers(0, 40), st.sampled_from(MODELS)),
    st.tuples(st.just("first_token"), st.integers(0, 50), st.floats(0.0, 3.0)),
    st.tuples(
        st.just("release"),
        st.integers(0, 50),
        st.booleans(),
        st.integers(0, 4000),
        st.integers(0, 4000),
        st.integers(0, 500),
        st.floats(0.0, 30.0),
    ),
    st.tuples(st.just("policy"), st.sampled_from(POLICIES), st.floats(0.0, 1.0)),
    st.tuples(
        st.just("admission"),
        st.sampled_from(kvroute.reference.TIERS),
        st.one_of(st.none(), st.integers(0, 4)),
        st.one_of(st.none(), st.floats(0.0, 600.0)),
    ),
    st.tuples(st.just("reset"), st.sampled_from(BACKENDS)),
    st.tuples(st.just("remove"), st.sampled_from(BACKENDS)),
    st.tuples(st.just("resume"), st.integers(0, 20), st.booleans()),
)
ops = st.one_of(chat_op, other_ops)


def weights_for(policy: str, x: float) -> dict[str, float]:
    """Some valid weights for the policy, derived from one drawn number."""
    spec = reference.POLICY_WEIGHTS[policy]
    if not spec or x < 0.5:
        return {}
    name = sorted(spec)[int(x * 1000) % len(spec)]
    _, lo, hi = spec[name]
    return {name: lo + (min(hi, lo + 10.0) - lo) * x}


def call(target: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    try:
        return ("ok", getattr(target, method)(*args, **kwargs))
    except KvrouteError as e:
        return ("raised", type(e).__name__, getattr(e, "param", None))


def normalise(result: Any) -> Any:
    if result[0] == "ok" and hasattr(result[1], "backend_id" if hasattr(result[1], "ticket") else "reason"):
        return ("ok", as_tuple(result[1]))
    if result[0] == "ok" and hasattr(result[1], "wait_id"):
        return ("ok", as_tuple(result[1]))
    return result


def run_both(seed: int, wait_queue_size: int, program: list[tuple[Any, ...]]) -> dict[str, int]:
    native = kvroute.Router("cost", seed=seed, wait_queue_size=wait_queue_size)
    ref = reference.Router("cost", seed=seed, wait_queue_size=wait_queue_size)
    tickets: list[int] = []
    waits: list[int] = []
    for step, op in enumerate(program):
        kind = op[0]
        both: list[Any] = []
        for r in (native, ref):
            if kind == "upsert":
                res = call(r, "upsert_backend", op[1], **op[2])
            elif kind == "chat":
                _, conv, turns, model, tools, tier, session, exclude = op
                res = call(r, "route", chat_body(conv, turns, model, tools), "chat", tier, session, exclude)
            elif kind == "other":
                body, endpoint = other_body(op[1], op[2], op[3])
                res = call(r, "route", body, endpoint)
            elif kind == "first_token":
                t = tickets[op[1] % len(tickets)] if tickets else 10_000
                res = call(r, "first_token", t, op[2])
            elif kind == "release":
                t = tickets[op[1] % len(tickets)] if tickets else 10_000
                res = call(r, "release", t, op[2], op[3], op[4], op[5], op[6])
            elif kind == "policy":
                res = call(r, "set_policy", op[1], **weights_for(op[1], op[2]))
            elif kind == "admission":
                res = call(r, "set_admission", op[1], max_queue=op[2], max_wait_ms=op[3])
            elif kind == "reset":
                res = call(r, "reset_backend", op[1])
            elif kind == "remove":
                res = call(r, "remove_backend", op[1])
            else:
                w = waits[op[1] % len(waits)] if waits else 10_000
                res = call(r, "resume" if op[2] else "cancel_wait", w)
            both.append(normalise(res))
        assert both[0] == both[1], f"step {step}: {op}"
        # Every scorer's raw value for every candidate, bit for bit.
        assert native.snapshot()["last_decision"] == ref.snapshot()["last_decision"], f"step {step}: {op}"
        res = both[0]
        if res[0] == "ok" and isinstance(res[1], tuple):
            if res[1][0] == "routed":
                tickets.append(res[1][1])
            elif res[1][0] == "queued" and res[1][1] not in waits:
                waits.append(res[1][1])
        if kind == "release" and res[0] == "ok":
            tickets.remove(tickets[op[1] % len(tickets)])
    ns, rs = native.snapshot(), ref.snapshot()
    assert ns["branches"] == rs["branches"]
    assert {t: {k: v[k] for k in ("admitted", "shed", "queued", "queue_full")} for t, v in ns["tiers"].items()} == rs[
        "tiers"
    ]
    assert [(b["id"], b["in_flight"], b["pending"], b["index"]["blocks"]) for b in ns["backends"]] == [
        (b["id"], b["in_flight"], b["pending"], b["index_blocks"]) for b in rs["backends"]
    ]
    assert native.policy() == ref.policy()
    return ns["branches"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**64 - 1),
    wait_queue_size=st.sampled_from([0, 3]),
    program=st.lists(ops, min_size=10, max_size=80),
)
def test_native_and_reference_decide_alike(seed: int, wait_queue_size: int, program: list[Any]) -> None:
    # Start every program with a fleet so most routes have candidates.
    prelude: list[tuple[Any, ...]] = [("upsert", b, {}) for b in BACKENDS[:3]]
    run_both(seed, wait_queue_size, prelude + program)


@pytest.mark.parametrize(
    ("body", "endpoint"),
    [
        (b"{not json", "chat"),
        (b"[]", "chat"),
        (b'{"messages":[{"role":"user","content":"x"}]}', "chat"),
        (b'{"model":"","messages":[{"role":"user","content":"x"}]}', "chat"),
        (b'{"model":"m"}', "chat"),
        (b'{"model":"m","messages":[]}', "chat"),
        (b'{"model":"m","messages":[{"content":"x"}]}', "chat"),
        (b'{"model":"m","messages":[{"role":"user","content":3}]}', "chat"),
        (b'{"model":"m","stream":"no","messages":[{"role":"user","content":"x"}]}', "chat"),
        (b'{"model":"m","max_tokens":1.5,"messages":[{"role":"user","content":"x"}]}', "chat"),
        (b'{"model":"m","prompt":{"a":1}}', "completions"),
        (b'{"model":"m"}', "completions"),
        (b'{"model":"m","input":3}', "embeddings"),
        (b'{"model":"m","instructions":3,"input":"x"}', "responses"),
        # Nested past the limit in a field the core skips, and in one it reads.
        (b'{"model":"m","messages":[{"role":"user","content":"x"}],"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         "chat"),
        (b'{"model":"m","messages":[{"role":"user","content":' + b"[" * 129 + b"]" * 129 + b"}]}", "chat"),
    ],
)
def test_malformed_bodies_agree(body: bytes, endpoint: str) -> None:
    native, ref = kvroute.Router(), reference.Router()
    native.upsert_backend("a")
    ref.upsert_backend("a")
    results = [call(r, "route", body, endpoint) for r in (native, ref)]
    assert results[0][0] == results[1][0] == "raised"
    assert results[0] == results[1]


def test_rng_is_splitmix64() -> None:
    r = reference.SplitMix64(0)
    assert r.next_u64() == 0xE220A8397B1DCDAF  # pinned in rust/core/src/rng.rs too
    assert r.next_u64() == 0x6E789E6AA1B965F4
    assert not math.isnan(reference.PRIOR_PREFILL_RATE)


def test_metrics_pushed_between_first_tokens_agree() -> None:
    # Metrics compared with our own counts of the moment they were pushed (waiting vs pending,
    # running vs decoding): a sequence random programs reach only rarely.
    chat = [("chat", conv, 0, "m", False, "normal", None, []) for conv in range(8)]
    program: list[tuple[Any, ...]] = [("upsert", b, {}) for b in BACKENDS[:3]]
    program += chat
    program += [("first_token", t, 0.05) for t in (0, 2, 4)]
    program += [("upsert", b, {"waiting": 3, "running": 4}) for b in BACKENDS[:3]]
    program += [("first_token", t, 0.05) for t in (1, 3, 5, 6)]
    program += chat
    run_both(0, 0, program)
