"""SIGKILL of a backend process while 50 streams are open on it: every client gets a complete answer or
a stream that ends with an error event, never a hang; requests that had received nothing are retried on
the other backend; the dead backend's circuit opens; each request is counted once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
from prometheus_client import generate_latest

from kvroute.control.fleet import backend_id_for
from kvroute.sim import SimFleet
from kvroute.sse_lines import split_events

from tests.procs import serve_process, sim_process
from tests.waiting import eventually

from .helpers import base, in_flight, running_gateway

STREAMS = 50
RUNNING = 25  # the killed backend decodes this many at once; the rest wait there for their first token
ONE = ("--instances", "1", "--base-port", "0", "--host", "127.0.0.1")  # one simulator per process


class Stream:
    """One client stream: what it received, and whether it had received anything at the moment of the kill."""

    def __init__(self) -> None:
        self.body = b""
        self.backend = ""
        self.status = 0
        self.first_byte = asyncio.Event()

    async def run(self, client: httpx.AsyncClient, url: str, n: int) -> None:
        body = {"model": "sim-model", "stream": True, "max_tokens": 400,
                "messages": [{"role": "user", "content": f"request {n}"}]}
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            self.status = response.status_code
            self.backend = response.headers.get("x-kvroute-backend", "")
            async for piece in response.aiter_bytes():
                self.body += piece
                self.first_byte.set()

    def events(self) -> list[str]:
        events, rest = split_events(self.body)
        assert rest == b"", self.body[-200:]  # every stream ends on an event boundary
        return [e.decode().removeprefix("data: ") for e in events]


def counted(gw, name: str) -> float:
    text = generate_latest(gw.observer.registry).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def requests_counted(gw) -> float:
    return counted(gw, "kvroute_requests_total")


def retries(gw) -> float:
    return counted(gw, "kvroute_retries_total")


async def test_sigkill_of_a_backend_with_50_streams_open() -> None:
    async with sim_process(*ONE, "--per-token-delay", "0.02", "--max-num-seqs", str(RUNNING)) as (victim, started), \
            sim_process(*ONE, "--per-token-delay", "0.001") as (_, other):
        (victim_url,), (survivor_url,) = started["urls"], other["urls"]
        victim_id, survivor_id = backend_id_for(victim_url), backend_id_for(survivor_url)
        async with running_gateway([victim_url, survivor_url], debug_headers=True, retry_budget=1.0,
                                   breaker_failures=3, breaker_cooldown=600.0) as gw, \
                httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
            gw.fleet.set_drained(survivor_id, True)  # every stream opens on the victim
            streams = [Stream() for _ in range(STREAMS)]
            tasks = [asyncio.create_task(s.run(client, base(gw), n)) for n, s in enumerate(streams)]
            # The first RUNNING streams decode; the others wait in the victim's queue, no byte sent.
            await eventually(lambda: sum(s.first_byte.is_set() for s in streams) >= RUNNING, "streams decoding",
                             timeout=60)
            await eventually(lambda: in_flight(gw) == STREAMS, "every stream in flight", timeout=60)
            gw.fleet.set_drained(survivor_id, False)
            started = [s for s in streams if s.first_byte.is_set()]
            victim.send_signal(signal.SIGKILL)
            # Bounded: a hang fails here instead of at the suite's timeout.
            await asyncio.wait_for(asyncio.gather(*tasks), 120)

            complete, cut = [], []
            for s in streams:
                assert s.status == 200
                events = s.events()
                if events[-1] == "[DONE]":
                    complete.append(s)
                else:
                    error = json.loads(events[-1])["error"]
                    assert set(error) == {"message", "type", "param", "code"}
                    # Cut only after it had received content from the victim: it could not move.
                    assert s.backend == victim_id and len(events) > 1
                    cut.append(s)
            # Every stream that had received nothing was retried on the survivor and is complete.
            assert {id(s) for s in started} <= {id(s) for s in cut}
            assert complete and {s.backend for s in complete} == {survivor_id}
            assert retries(gw) == len(complete)
            victim_state = gw.fleet.get(victim_id)
            assert victim_state is not None and victim_state.breaker.is_open
            assert in_flight(gw) == 0
            assert requests_counted(gw) == STREAMS  # once each, the retried ones included


async def open_streams(url: str, count: int, max_tokens: int) -> tuple[list[Stream], list[asyncio.Task[None]]]:
    """`count` streams, each on its own connection (so the kernel spreads them over the workers)."""
    streams = [Stream() for _ in range(count)]

    async def one(s: Stream, n: int) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
            body = {"model": "sim-model", "stream": True, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": f"request {n}"}]}
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
                s.status = response.status_code
                async for piece in response.aiter_bytes():
                    s.body += piece
                    s.first_byte.set()

    tasks = [asyncio.create_task(one(s, n)) for n, s in enumerate(streams)]
    await eventually(lambda: all(s.first_byte.is_set() for s in streams), "every stream started", timeout=60)
    return streams, tasks


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_sigterm_with_50_streams_open_drains_every_one_to_completion() -> None:
    async with SimFleet(instances=1, per_token_delay=0.01) as fleet:
        async with serve_process("--backend", fleet.urls[0], "--grace-period", "60") as (process, port, _):
            streams, tasks = await open_streams(f"http://127.0.0.1:{port}", STREAMS, 150)
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            assert await asyncio.wait_for(process.wait(), 60) == 0
    for s in streams:
        assert s.status == 200 and s.events()[-1] == "[DONE]"
        assert not any('"error"' in e for e in s.events())


async def test_sigkill_of_one_worker_spares_the_others_and_the_supervisor_starts_it_again() -> None:
    async with SimFleet(instances=1, per_token_delay=0.02) as fleet:
        async with serve_process("--backend", fleet.urls[0], workers=2) as (process, port, _):
            url = f"http://127.0.0.1:{port}"
            before = children(process.pid)
            assert len(before) == 2
            streams, tasks = await open_streams(url, 20, 300)
            os.kill(before[0], signal.SIGKILL)
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
            # The killed worker's clients lose their connections (nothing can answer them); the other
            # worker's streams finish whole. 20 connections all on one worker: odds 2 in a million.
            lost = [r for r in results if isinstance(r, Exception)]
            assert all(isinstance(r, httpx.TransportError) for r in lost), lost
            finished = [s for s, r in zip(streams, results) if r is None]
            assert lost and finished
            assert all(s.events()[-1] == "[DONE]" for s in finished)

            await eventually(lambda: len(children(process.pid)) == 2, "the worker started again", timeout=30)
            assert before[0] not in children(process.pid) and before[1] in children(process.pid)
            assert process.returncode is None
            await answers_again(url)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 60) == 0


async def answers_again(url: str) -> None:
    """New connections succeed again (the restarted worker listens); each gets a whole answer."""
    body = {"model": "sim-model", "max_tokens": 2, "messages": [{"role": "user", "content": "again"}]}
    for _ in range(20):
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(url + "/v1/chat/completions", json=body)
            assert response.status_code == 200
