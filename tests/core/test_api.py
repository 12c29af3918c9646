"""The native Router's Python surface: decisions as values, misuse as exceptions."""

import json

import pytest

import kvroute
from kvroute import (
    InvalidConfig,
    KvrouteError,
    MalformedRequest,
    Rejected,
    Routed,
    Router,
    UnknownBackend,
    UnknownTicket,
)


def chat(model: str = "m", text: str = "hello", **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra}).encode()


def test_version_and_exports() -> None:
    assert isinstance(kvroute.__version__, str)
    for exc in (MalformedRequest, InvalidConfig, UnknownTicket, UnknownBackend):
        assert issubclass(exc, KvrouteError)


def test_route_reads_the_body_and_release_decrements() -> None:
    r = Router("round_robin")
    r.upsert_backend("a")
    r.upsert_backend("b")
    d1 = r.route(chat(stream=True, max_tokens=7))
    d2 = r.route(chat())
    assert isinstance(d1, Routed) and isinstance(d2, Routed)
    assert {d1.backend_id, d2.backend_id} == {"a", "b"}
    assert d1.stream and d1.max_tokens == 7 and d1.model == "m" and d1.branch == "round_robin"
    assert not d2.stream and d2.max_tokens is None
    assert r.in_flight("a") == r.in_flight("b") == 1
    assert r.release(d1.ticket, True) == []
    assert r.in_flight(d1.backend_id) == 0
    with pytest.raises(UnknownTicket):
        r.release(d1.ticket, True)


def test_least_inflight_prefers_the_idle_backend() -> None:
    r = Router("least_inflight")
    r.upsert_backend("a")
    r.upsert_backend("b")
    busy = r.route(chat())
    assert isinstance(busy, Routed)
    for _ in range(5):
        d = r.route(chat())
        assert isinstance(d, Routed) and d.backend_id != busy.backend_id
        r.release(d.ticket, True)


@pytest.mark.parametrize(
    ("body", "endpoint", "param"),
    [
        (b"{not json", "chat", None),
        (b"[1]", "chat", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "chat", "model"),
        (b'{"model": "m"}', "chat", "messages"),
        (b'{"model": "m"}', "completions", "prompt"),
        (b'{"model": "m"}', "embeddings", "input"),
        (b'{"model": "m"}', "responses", "input"),
        (b'{"model": "m", "stream": 1, "messages": [{"role": "user", "content": "x"}]}', "chat", "stream"),
    ],
)
def test_malformed_bodies_raise_with_param(body: bytes, endpoint: str, param: str | None) -> None:
    r = Router()
    r.upsert_backend("a")
    with pytest.raises(MalformedRequest) as ei:
        r.route(body, endpoint)  # type: ignore[arg-type]
    assert ei.value.param == param


def test_rejections_are_values() -> None:
    r = Router()
    d = r.route(chat())
    assert isinstance(d, Rejected) and d.reason == "no_backend"
    r.upsert_backend("a", models=["m"])
    d = r.route(chat(model="other"))
    assert isinstance(d, Rejected) and d.reason == "unknown_model" and d.model == "other"
    r.upsert_backend("a", healthy=False)
    d = r.route(chat())
    assert isinstance(d, Rejected) and d.reason == "no_backend"
    r.upsert_backend("a", healthy=True)
    d = r.route(chat(), exclude=["a"])
    assert isinstance(d, Rejected) and d.reason == "no_backend"


def test_backend_without_known_models_serves_any() -> None:
    r = Router()
    r.upsert_backend("a")
    assert isinstance(r.route(chat(model="anything")), Routed)


def test_backends_and_misuse() -> None:
    r = Router()
    r.upsert_backend("a")
    r.upsert_backend("b")
    assert r.backend_ids() == ["a", "b"]
    d = r.route(chat())
    assert isinstance(d, Routed)
    r.remove_backend(d.backend_id)
    assert r.release(d.ticket, False) == []  # ticket of a removed backend: still releasable
    with pytest.raises(UnknownBackend):
        r.remove_backend(d.backend_id)
    with pytest.raises(UnknownBackend):
        r.in_flight("zzz")
    with pytest.raises(UnknownBackend):
        r.reset_backend("zzz")
    with pytest.raises(InvalidConfig):
        r.set_policy("fastest")
    with pytest.raises(InvalidConfig):
        r.set_policy("cost", nope=1.0)
    with pytest.raises(InvalidConfig):
        Router("nope")
    with pytest.raises(InvalidConfig):
        r.upsert_backend("a", kv_usage=3.0)
    with pytest.raises(UnknownTicket):
        r.first_token(12345, 0.1)


def test_policy_round_trip_and_snapshot_is_plain() -> None:
    r = Router("round_robin")
    assert r.policy() == ("round_robin", {})
    r.set_policy("cost", kv_weight=2.0)
    name, weights = r.policy()
    assert name == "cost" and weights["kv_weight"] == 2.0
    r.upsert_backend("a", models=["m"], waiting=3, running=2, kv_usage=0.5, num_gpu_blocks=100, block_size=16)
    snap = r.snapshot()
    json.dumps(snap)  # plain values only
    (b,) = snap["backends"]
    assert b["id"] == "a" and b["waiting"] == 3 and b["index"]["capacity_blocks"] == 100
    assert set(snap["tiers"]) == {"high", "normal", "low"}
