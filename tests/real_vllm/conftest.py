"""The real_vllm tier: two real vLLM CPU servers (tiny random Llama) for the whole session.

Starting vLLM costs ~40 s of CPU per server on this 2-core machine, so the two servers are
started once, concurrently, and shared. A test that kills one (the failover check) leaves it
dead; the function-scoped `vllm_pair` fixture restarts any dead server before the next test
uses the pair, so tests stay independent whatever their order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import zmq

import kvroute_proc
import tiny_model
import vllm_fleet

HERE = Path(__file__).resolve().parent
# Start-up of two servers plus a model build can exceed the suite's default 300 s per-test
# timeout in whichever test first asks for the pair.
TIER_TIMEOUT = 900


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.real_vllm)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TIER_TIMEOUT))


@pytest.fixture(scope="session")
def vllm_env() -> Path:
    env_dir = os.environ.get(vllm_fleet.ENV_VAR)
    problem = vllm_fleet.env_problem(env_dir)
    if problem:
        pytest.skip(problem)
    assert env_dir is not None
    return Path(env_dir)


@pytest.fixture(scope="session")
def model_dir(vllm_env: Path) -> Path:
    return tiny_model.ensure_model(vllm_env / "bin" / "python")


@pytest.fixture(scope="session")
def tokenizer_json(model_dir: Path) -> Path:
    return model_dir / "tokenizer.json"


@pytest.fixture(scope="session")
def _kv_event_subscribers() -> Iterator[list[zmq.Socket]]:
    """One bound SUB socket per server, held for the whole session.

    Bound before the servers start, on a port ZMQ picks: no free-port race, vLLM's publisher never
    dials a port some other test server took meanwhile, and the subscription is in place long
    before a test looks for events (no "slow joiner" loss).
    """
    ctx = zmq.Context()
    subs = []
    try:
        for _ in range(2):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.bind("tcp://127.0.0.1:*")
            subs.append(sub)
        yield subs
    finally:
        for sub in subs:
            sub.close()
        ctx.term()


@pytest.fixture(scope="session")
def _vllm_servers(
    vllm_env: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
    _kv_event_subscribers: list[zmq.Socket],
) -> Iterator[list[vllm_fleet.VllmServer]]:
    logs = tmp_path_factory.mktemp("vllm-logs")
    servers = [
        vllm_fleet.VllmServer(vllm_env, model_dir, logs / f"vllm-{i}.log", kv_events_port=port_of(sub))
        for i, sub in enumerate(_kv_event_subscribers)
    ]
    vllm_fleet.start_all(servers)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def port_of(sub: zmq.Socket) -> int:
    return int(sub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])


@pytest.fixture
def kv_events(
    vllm_pair: list[vllm_fleet.VllmServer], _kv_event_subscribers: list[zmq.Socket]
) -> list[zmq.Socket]:
    """The SUB socket of each server in `vllm_pair`, in the same order, emptied of older events."""
    for sub in _kv_event_subscribers:
        while sub.poll(timeout=0):
            sub.recv_multipart()
    return _kv_event_subscribers


@pytest.fixture
def vllm_pair(_vllm_servers: list[vllm_fleet.VllmServer]) -> list[vllm_fleet.VllmServer]:
    """Both servers, alive and healthy (restarting any a previous test killed)."""
    dead = [s for s in _vllm_servers if not (s.alive() and s.healthy())]
    if dead:
        for server in dead:
            server.stop()
        vllm_fleet.start_all(dead)
    return _vllm_servers


@pytest.fixture
def kvroute_factory(tmp_path: Path) -> Iterator[kvroute_proc.Factory]:
    """Starts `kvroute serve` subprocesses on free ports; all are stopped after the test."""
    factory = kvroute_proc.Factory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
