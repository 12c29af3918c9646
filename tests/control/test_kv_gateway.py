"""The exact cache view in a running gateway: `kvroute serve` with a tokenizer and KV events from
`kvroute sim` processes, each side reading the same tiny ChatML model. For a growing conversation
the router's prediction (x-kvroute-cached-tokens) must equal what the engine reports
(usage.prompt_tokens_details.cached_tokens), request by request; two serve --workers 2 processes
subscribe on their own and show the same view."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import tiny_chatml
from tests.procs import serve_process, sim_process

BS = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chatml.build(tmp_path_factory.mktemp("tiny-chatml"))


def serve_args(info: dict[str, Any], model_dir: Path) -> list[str]:
    args = ["--tokenizer", f"sim-model={model_dir}", "--block-tokens", str(BS), "--poll-interval", "0.2",
            "--poll-timeout", "0.2", "--debug-headers"]
    for url in info["urls"]:
        ev = info["kv_events"][url]
        args += ["--backend", url, "--kv-events-endpoints", f"{url}={ev['endpoint']}",
                 "--kv-events-replay-endpoints", f"{url}={ev['replay_endpoint']}"]
    return args


async def settled(http: aiohttp.ClientSession, admin: int, info: dict[str, Any]) -> bool:
    """Every batch each engine published has been applied by the router."""
    async with http.get(f"http://127.0.0.1:{admin}/admin/backends") as r:
        backends = {b["url"]: b for b in (await r.json())["backends"]}
    for url in info["urls"]:
        async with http.get(url + "/sim/state") as r:
            published = (await r.json())["kv_events"]["next_seq"]
        sub = backends[url]["kv_events"]
        if sub is None or sub["last_seq"] != published - 1:
            return False
    return True


async def views(http: aiohttp.ClientSession, admin: int) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{admin}/admin/backends") as r:
        return {b["url"]: b["core"]["kv_events"] for b in (await r.json())["backends"]}


async def test_predicted_cached_tokens_equal_the_engines_turn_by_turn(model_dir: Path) -> None:
    sim_args = ("--instances", "2", "--base-port", "0", "--kv-events-port", "0", "--tokenizer", str(model_dir),
                "--block-size", str(BS), "--num-gpu-blocks", "4000", "--per-token-delay", "0.001")
    async with sim_process(*sim_args) as (_, info), \
            serve_process(*serve_args(info, model_dir), workers=2) as (_, port, admin), \
            aiohttp.ClientSession() as http:
        seen: list[tuple[int, int]] = []
        for conv in range(3):
            messages = [{"role": "system", "content": f"You are a helpful assistant number {conv}. Answer briefly."}]
            for turn in range(4):
                messages.append({"role": "user", "content": f"Question {turn}: what is the capital of France?"})
                for _ in range(200):  # the view must have every event before the next decision
                    if await settled(http, admin, info):
                        break
                    await asyncio.sleep(0.05)
                body = {"model": "sim-model", "messages": messages, "max_tokens": 6}
                async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    predicted = int(r.headers["x-kvroute-cached-tokens"])
                    assert r.headers["x-kvroute-key-space"] == "tokens"
                    answer = await r.json()
                reported = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
                seen.append((predicted, reported))
                messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
        # Two workers answered these; each decided on its own view, and each view was exact.
        assert all(p == r for p, r in seen), seen
        assert sum(r > 0 for _, r in seen) >= 9, seen  # turns after the first hit the cache
        # A long prompt is tokenized on a worker thread (proxy OFFLOAD_ROUTE_BYTES): same answer.
        long_body = {"model": "sim-model", "max_tokens": 2,
                     "messages": [{"role": "user", "content": "the quick brown fox " * 1000}]}
        async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=long_body) as r:
            assert r.status == 200 and r.headers["x-kvroute-key-space"] == "tokens"
            assert (await r.json())["usage"]["prompt_tokens"] > 1200
        v = await views(http, admin)
        # A backend whose engine has published is event-fed and confirmed; one that never ran a
        # request has no batch yet and stays on the router's own view (None here).
        fed = [x for x in v.values() if x is not None]
        assert fed and all(x["confirmed"] and x["confirmed_blocks"] == x["engine_blocks"] and x["orphans"] == 0
                           and x["resets"] == 0 for x in fed), v

