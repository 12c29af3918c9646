"""The circuit breaker's half-open probe against a real HTTP server that answers with a chosen status.

Only a 2xx completion proves recovery; 429, any other 4xx, 5xx and no answer keep the circuit open
(kvroute.control.health.probe_verdict has the reasons).
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import pytest
from aiohttp import web

from kvroute._native import Router
from kvroute.config import Settings
from kvroute.control.fleet import Backend, Fleet
from kvroute.control.health import CircuitState, ProbeVerdict, probe_verdict
from kvroute.control.poller import Poller
from kvroute.proxy.upstream import UpstreamPool
from tests.control.test_health import Clock


@contextlib.asynccontextmanager
async def pool() -> AsyncIterator[UpstreamPool]:
    client = UpstreamPool(connect_timeout=5.0)
    try:
        yield client
    finally:
        client.close()


@pytest.mark.parametrize(("status", "verdict"), [
    (None, ProbeVerdict.FAILED), (200, ProbeVerdict.RECOVERED), (204, ProbeVerdict.RECOVERED),
    (302, ProbeVerdict.FAILED), (400, ProbeVerdict.REJECTED), (401, ProbeVerdict.REJECTED),
    (404, ProbeVerdict.REJECTED), (429, ProbeVerdict.OVERLOADED), (500, ProbeVerdict.FAILED),
    (503, ProbeVerdict.FAILED)])
def test_probe_verdict_table(status, verdict):
    assert probe_verdict(status) is verdict


class Completions:
    """A backend whose /v1/completions answers `status`; it records which models were asked for."""

    def __init__(self) -> None:
        self.status = 200
        self.models: list[str] = []

    async def complete(self, request: web.Request) -> web.Response:
        self.models.append((await request.json())["model"])
        return web.json_response({"error": {"message": "as told", "code": self.status}} if self.status >= 300
                                 else {"choices": [{"text": "pong"}]}, status=self.status)


@contextlib.asynccontextmanager
async def backend_answering() -> AsyncIterator[tuple[Completions, str]]:
    answers = Completions()
    app = web.Application()
    app.router.add_post("/v1/completions", answers.complete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield answers, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def half_open(fleet: Fleet, backend: Backend, clock: Clock) -> None:
    for _ in range(backend.breaker.threshold):
        fleet.report(backend.id, False, "http_5xx")
    clock.now += backend.breaker.cooldown
    fleet.tick()
    assert backend.circuit is CircuitState.HALF_OPEN


@pytest.mark.parametrize(("status", "verdict", "closed"), [
    (200, ProbeVerdict.RECOVERED, True),
    (429, ProbeVerdict.OVERLOADED, False),
    (404, ProbeVerdict.REJECTED, False),
    (400, ProbeVerdict.REJECTED, False),
    (503, ProbeVerdict.FAILED, False)])
async def test_only_a_2xx_probe_closes_the_circuit(status, verdict, closed):
    clock = Clock()
    settings = Settings()
    fleet = Fleet(Router("round_robin"), settings, clock=clock)
    async with backend_answering() as (answers, url), pool() as client:
        backend = fleet.add(url, models=["m"])
        poller = Poller(fleet, client, settings)
        half_open(fleet, backend, clock)
        answers.status = status
        assert await poller.probe(backend) is verdict
        assert answers.models == ["m"]  # a real one-token completion went out
        assert backend.circuit is (CircuitState.CLOSED if closed else CircuitState.OPEN)
        assert backend.routable() is closed
        trips = backend.breaker.trips
        if not closed:  # the next cool-down probes again; once it serves, the circuit closes
            answers.status = 200
            clock.now += backend.breaker.cooldown
            fleet.tick()
            assert await poller.probe(backend) is ProbeVerdict.RECOVERED
            assert backend.circuit is CircuitState.CLOSED and backend.breaker.trips == trips


async def test_a_rejected_probe_makes_the_next_poll_reread_the_models():
    clock = Clock()
    settings = Settings()
    fleet = Fleet(Router("round_robin"), settings, clock=clock)
    async with backend_answering() as (answers, url), pool() as client:
        backend = fleet.add(url, models=["gone"])
        assert backend.models_known
        half_open(fleet, backend, clock)
        answers.status = 404
        assert await Poller(fleet, client, settings).probe(backend) is ProbeVerdict.REJECTED
        assert not backend.models_known


async def test_a_probe_with_no_answer_keeps_the_circuit_open():
    clock = Clock()
    settings = Settings()
    fleet = Fleet(Router("round_robin"), settings, clock=clock)
    async with backend_answering() as (_, url):
        pass  # the server is gone: its port refuses connections
    async with pool() as client:
        backend = fleet.add(url, models=["m"])
        half_open(fleet, backend, clock)
        assert await Poller(fleet, client, settings).probe(backend) is ProbeVerdict.FAILED
        assert backend.circuit is CircuitState.OPEN
