"""10,000 mixed requests through the router: every one accounted for, nothing left in flight.

Streamed and not, chat and completions, several models over two differently provisioned fleets, some
bad requests, and clients that hang up at random. A raw keep-alive client keeps the run short.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import httptools

from kvroute.sim import SimFleet

from tests.waiting import eventually

from .helpers import in_flight, running_gateway

TOTAL = 10_000
CONCURRENCY = 32
MODELS = ["m1", "m2", "m3"]


class Reply:
    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.done = False
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def make_request(rng: random.Random) -> tuple[bytes, bool, str]:
    """(raw HTTP request, hang up mid-way?, kind)."""
    roll = rng.random()
    model = rng.choice(MODELS)
    stream = rng.random() < 0.5
    if roll < 0.02:
        path, body, kind = "/v1/chat/completions", b'{"model": "m1", "messages": 3}', "bad"
    elif roll < 0.03:
        path, body, kind = "/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', "unknown"
    elif roll < 0.5:
        path, kind = "/v1/completions", "ok"
        body = json.dumps({"model": model, "prompt": f"tell me {rng.randrange(50)}", "stream": stream,
                           "max_tokens": rng.randint(1, 8)}).encode()
    else:
        path, kind = "/v1/chat/completions", "ok"
        body = json.dumps({"model": model, "stream": stream, "max_tokens": rng.randint(1, 8),
                           "messages": [{"role": "system", "content": f"you are bot {rng.randrange(4)}"},
                                        {"role": "user", "content": f"question {rng.randrange(100)}"}]}).encode()
    head = (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    return head + body, kind == "ok" and rng.random() < 0.05, kind


async def client_worker(port: int, seed: int, jobs: list[int], outcomes: Counter) -> None:
    rng = random.Random(seed)
    reader = writer = None
    for _ in jobs:
        raw, hang_up, kind = make_request(rng)
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert reader is not None
        writer.write(raw)
        reply = Reply()
        while not reply.done:
            data = await asyncio.wait_for(reader.read(65536), 30)  # a hang fails the test, bounded
            if not data:
                break
            reply.parser.feed_data(data)
            if hang_up and reply.status:
                break
        if hang_up:
            writer.transport.abort()
            writer = None
            outcomes["hung_up"] += 1
            continue
        assert reply.done, f"connection closed mid-response ({kind}, status {reply.status})"
        if reply.status == 200:
            assert kind == "ok"
            if reply.body.startswith(b"data: "):
                assert reply.body.endswith(b"data: [DONE]\n\n"), reply.body[-200:]
            else:
                assert json.loads(reply.body)["usage"]["completion_tokens"] >= 1
            outcomes["completed"] += 1
        else:
            error = json.loads(reply.body)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert (kind, reply.status) in (("bad", 400), ("unknown", 404)), (kind, reply.status, error)
            outcomes[f"error_{reply.status}"] += 1
    if writer is not None:
        writer.close()


async def test_ten_thousand_mixed_requests_are_all_accounted_for() -> None:
    async with SimFleet(instances=2, per_token_delay=0.0, model=["m1", "m2"]) as small, \
            SimFleet(instances=2, per_token_delay=0.0, model=["m2", "m3"], seed=1) as large:
        async with running_gateway(small.urls + large.urls, policy="cost") as gw:
            outcomes: Counter = Counter()
            jobs = list(range(TOTAL))
            await asyncio.gather(*(client_worker(gw.proxy.port, seed, jobs[seed::CONCURRENCY], outcomes)
                                   for seed in range(CONCURRENCY)))
            assert sum(outcomes.values()) == TOTAL, outcomes
            assert outcomes["completed"] > TOTAL * 0.85, outcomes
            assert outcomes["hung_up"] > 0 and outcomes["error_400"] > 0 and outcomes["error_404"] > 0, outcomes
            await eventually(lambda: in_flight(gw) == 0, "every ticket released")
            instances = small.instances + large.instances
            await eventually(lambda: all(i.state()["running"] == 0 and i.state()["waiting"] == 0 for i in instances),
                             "backends idle (hung-up requests aborted)")
            assert not gw.proxy.dispatcher.waiters
