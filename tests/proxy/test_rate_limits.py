"""Per-API-key rate limits through a whole gateway over real sockets: requests per second and tokens
per minute, answered 429 in OpenAI's shape with Retry-After; other keys untouched; the answer's
reported tokens charged after it; a request that reaches no backend costs nothing."""

from __future__ import annotations

import httpx

from kvroute.config import Settings, rate_limiter

from .helpers import Exchange, base, chat_body, running_gateway

JSON = {"content-type": "application/json"}


def keyed(key: str | None) -> dict[str, str]:
    return {**JSON, **({"authorization": f"Bearer {key}"} if key else {})}


async def post(client: httpx.AsyncClient, gw, key: str | None, model: str = "m") -> httpx.Response:
    return await client.post(base(gw) + "/v1/chat/completions", content=chat_body(model=model), headers=keyed(key))


def assert_limited(response: httpx.Response, what: str) -> int:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert what in error["message"]
    return int(response.headers["retry-after"])


async def test_requests_per_second_per_key(scripted) -> None:
    backend = await scripted()
    # 0.5/s: a burst of one request, the next two seconds later (slow enough for any machine).
    async with running_gateway([backend.url], rate_limit_rps=0.5, rate_limit_rps_by_key={"sk-big": 100.0}) as gw, \
            httpx.AsyncClient() as client:
        assert (await post(client, gw, "sk-a")).status_code == 200
        assert assert_limited(await post(client, gw, "sk-a"), "requests per second") == 2
        assert (await post(client, gw, "sk-b")).status_code == 200  # every key has its own bucket
        assert (await post(client, gw, None)).status_code == 200  # and so do requests without one
        assert [(await post(client, gw, "sk-big")).status_code for _ in range(10)] == [200] * 10  # its own limit
        assert len(backend.seen) == 1 + 1 + 1 + 10  # the refused one never reached it


def reporting(completion_tokens: int):
    async def script(ex: Exchange) -> None:
        await ex.json(200, b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":10,'
                           b'"completion_tokens":%d,"total_tokens":%d}}' % (completion_tokens, completion_tokens + 10))
    return script


async def test_tokens_per_minute_charge_what_the_backend_reported(scripted) -> None:
    backend = await scripted(reporting(completion_tokens=5000))
    async with running_gateway([backend.url], rate_limit_tpm=6000.0) as gw, httpx.AsyncClient() as client:
        assert (await post(client, gw, "sk-a")).status_code == 200  # admitted on its ~20-token estimate
        # 5010 tokens used of 6000 a minute (100 a second): the next ~20-token request passes, the
        # one after it (the bucket now in debt) waits about 40 s.
        assert (await post(client, gw, "sk-a")).status_code == 200
        wait = assert_limited(await post(client, gw, "sk-a"), "tokens per minute")
        assert 30 <= wait <= 60, wait
        assert (await post(client, gw, "sk-b")).status_code == 200


async def test_a_request_no_backend_took_costs_no_tokens(scripted) -> None:
    backend = await scripted()
    # 60 tokens a minute: three ~20-token estimates would empty the bucket if they were kept.
    async with running_gateway([backend.url], rate_limit_tpm=60.0) as gw, httpx.AsyncClient() as client:
        for _ in range(10):
            assert (await post(client, gw, "sk-a", model="not-served")).status_code == 404
        assert (await post(client, gw, "sk-a")).status_code == 200
    assert len(backend.seen) == 1


def test_each_worker_gets_its_share_of_every_rate() -> None:
    assert rate_limiter(Settings()) is None  # nothing limited: the proxy asks nothing
    limiter = rate_limiter(Settings(workers=2, rate_limit_rps=4.0))
    assert limiter is not None
    assert [limiter.admit("k", 1, 0.0) is None for _ in range(3)] == [True, True, False]
