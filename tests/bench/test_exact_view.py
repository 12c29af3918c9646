"""The bench's exact-view setup: the shared tokenizer directory, the sim fleet's KV events and its reset.

What the exact-view benchmark relies on: the simulator and kvroute tokenize a workload's chat to
the same ids, each workload word is one token (so the profiles' timings hold as with the built-in
tokenizer), kvroute keys prompts by tokens, and a fleet reset between points empties the view of a
router that lives across it (AllBlocksCleared, then a publisher numbering from 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest

from bench import contenders, sim_tokenizer, workloads
from bench.harness import FleetProc
from kvroute.model_tokenizers import load_dir
from kvroute.sim.chat_template import load_chat
from kvroute.sim.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sim_tokenizer.ensure(tmp_path_factory.mktemp("cache"))


def test_workload_words_are_one_token_and_both_sides_agree(model_dir: Path) -> None:
    assert sim_tokenizer.ensure(model_dir.parent) == model_dir  # built once, then found
    sim_tok = load_tokenizer(str(model_dir))
    work = workloads.multiturn("sim-model", conversations=3, turns=3)
    last = work.requests[-1].body["messages"]
    for message in last[1:]:  # user and assistant turns: workload words only
        assert len(sim_tok.encode(message["content"])) == len(message["content"].split())
    # Headers: capitals, digits and punctuation, one token per character, the same every time.
    header = last[0]["content"].split(".")[0] + "."
    assert sim_tok.encode(header) == sim_tok.encode(header) and len(sim_tok.encode("C0.")) == 3
    assert sim_tok.encode("é") == [sim_tokenizer.vocabulary()[sim_tokenizer.UNK]]

    chat = load_chat(sim_tok, str(model_dir), "chatml", True)
    assert chat.source.endswith("tokenizer_config.json")
    core = load_dir(str(model_dir))
    assert core.has_chat_template and core.per_message
    for spec in work.requests:
        assert core.chat_ids(json.dumps(spec.body).encode()) == chat.prompt_ids(spec.body["messages"])


async def _chat(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    async with session.post(url + "/v1/chat/completions", json={**body, "stream": False}) as resp:
        assert resp.status == 200, await resp.text()
        return dict(resp.headers), await resp.json()


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Poll an async check (a hang guard, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"never happened within {timeout:g} s: {what}"
        await asyncio.sleep(0.05)


async def _views(session: aiohttp.ClientSession, admin_url: str) -> list[dict[str, Any]]:
    async with session.get(admin_url + "/admin/backends") as resp:
        data = await resp.json()
    backends = data["backends"] if isinstance(data, dict) else data
    # None until the backend's subscription has started (its model known).
    return [(b.get("core") or {}).get("kv_events") or {"confirmed_blocks": 0, "engine_blocks": 0} for b in backends]


async def test_reset_empties_the_view_of_a_router_living_across_it(model_dir: Path, tmp_path: Path) -> None:
    fleet = FleetProc(2, "qwen2.5-1.5b-l4", 4.0, 0, tmp_path, tokenizer=model_dir, kv_events=True)
    await fleet.start()
    try:
        assert fleet.info["tokenizer"] == str(model_dir) and set(fleet.info["kv_events"]) == set(fleet.urls)
        exact = contenders.by_name("kvroute:cost+exact")
        assert exact.exact and exact.workers == 1 and contenders.by_name("kvroute:cost+exact:w4").workers == 4
        exact = dataclasses.replace(exact, flags=exact.flags + ("--debug-headers",))
        running = await contenders.start(exact, fleet.urls, tmp_path, fleet.model, fleet.info)
        body = workloads.multiturn(fleet.model, conversations=1, turns=1, output_tokens=8).requests[0].body
        sim_ids = load_chat(load_tokenizer(str(model_dir)), str(model_dir), "chatml", True).prompt_ids(body["messages"])
        try:
            async with aiohttp.ClientSession() as session:
                headers, answer = await _chat(session, running.base_url, body)
                assert headers["x-kvroute-key-space"] == "tokens"
                assert answer["usage"]["prompt_tokens"] == len(sim_ids)  # the simulator tokenized with it
                assert int(headers["x-kvroute-cached-tokens"]) == 0

                async def stored() -> bool:
                    return any(v["confirmed_blocks"] > 0 for v in await _views(session, running.admin_url))
                await _until(stored, "the engine's BlockStored in the view")
                headers, answer = await _chat(session, running.base_url, body)
                cached = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
                assert cached > 0 and int(headers["x-kvroute-cached-tokens"]) == cached

                await fleet.reset()

                async def cleared() -> bool:
                    return all(v["confirmed_blocks"] == 0 and v["engine_blocks"] == 0
                               for v in await _views(session, running.admin_url))
                await _until(cleared, "the view emptied by the reset")
                headers, answer = await _chat(session, running.base_url, body)
                assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
                assert int(headers["x-kvroute-cached-tokens"]) == 0
                # The restarted publishers number from 0; the view follows them.
                await _until(stored, "the restarted publisher's events in the view")
                headers, answer = await _chat(session, running.base_url, body)
                assert int(headers["x-kvroute-cached-tokens"]) == answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        finally:
            await running.stop()
        # With workers, start() returns once every worker serves; each keys by tokens.
        workers = await contenders.start(contenders.by_name("kvroute:cost+exact:w2"), fleet.urls, tmp_path,
                                         fleet.model, fleet.info)
        try:
            assert "--workers" in workers.argv and "--kv-events-replay-endpoints" in workers.argv
            async with aiohttp.ClientSession() as session:
                _, answer = await _chat(session, workers.base_url, body)
                assert answer["usage"]["prompt_tokens"] == len(sim_ids)
        finally:
            await workers.stop()
    finally:
        await fleet.stop()


BT = 16


def _cold_picks(router: Any, n: int) -> list[str]:
    picks = []
    for i in range(n):
        ids = [100_000 * (i + 1) + j for j in range(400)]
        body = json.dumps({"model": "m", "prompt": ids, "max_tokens": 4}).encode()
        picks.append(router.route(body, "completions").backend_id)
    return picks


def test_exact_view_spreads_new_prompts_routed_before_their_events() -> None:
    """What the benchmark met (docs/benchmarks.md, "Exact cache view and workers"): b0-b2 each hold
    one conversation, confirmed by events; six new ones arrive before any of their events. The byte
    view spreads such a burst (a placement counts as held at once); the exact view must as well: an
    event-fed backend's held blocks include the chains in flight there.
    (b3 holds one block so that all four are event-fed for certain.)"""
    import kvroute

    router = kvroute.Router("cost", block_tokens=BT, seed=0)
    for b in ("b0", "b1", "b2", "b3"):
        router.upsert_backend(b)
    # Every backend event-fed (its first batch applied): b0-b2 hold 25 blocks each, b3 one.
    for k, b in enumerate(("b0", "b1", "b2", "b3")):
        ids = [900_000 * (k + 1) + j for j in range(400 if b != "b3" else BT)]
        n = len(ids) // BT
        router.kv_apply(b, "m", [("stored", [1000 * (k + 1) + i for i in range(n)], None, ids[: n * BT], BT, None, None)])
    picks = _cold_picks(router, 6)
    assert max(picks.count(b) for b in set(picks)) <= 3, picks  # before the fix: all six on b3
