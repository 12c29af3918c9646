"""The exact cache view against real vLLM (issue 13): one vLLM 0.32 CPU server publishing KV events
(ZMQ PUB + replay ROUTER), `kvroute serve` tokenizing with the tiny model's tokenizer and template
and subscribed to those events. Request by request, kvroute's prediction (x-kvroute-cached-tokens)
must equal vLLM's `usage.prompt_tokens_details.cached_tokens`; the same decoder reads vLLM's batches
with no errors; the view follows `POST /reset_prefix_cache` and a restart of the server.

Module-scoped: one server (start-up ~70-85 s here), restarted once, by the last test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import zmq

import kvroute_proc
import vllm_fleet
from bench.procs import free_port
from kvroute.control.kv_decode import Cleared, Removed, Stored, decode_batch
from kvroute.control.kv_events import END_SEQ
from kvroute.model_tokenizers import load_dir

MODEL = vllm_fleet.SERVED_NAME
WAIT = 60.0  # a hang guard for states the servers reach in their own time, not a timing assertion


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout:g} s: {what}")
        time.sleep(0.05)


class EngineLog:
    """The engine's blocks as the test reads them itself: every batch the publisher's replay buffer
    holds (all it published: the buffer keeps 10000 steps, this module makes far fewer), decoded
    with kvroute's decoder. Read from replay rather than a SUB socket of its own, so no batch is
    lost to a late subscription, and after a restart it holds only the new process's batches."""

    def __init__(self, batches: list[tuple[int, bytes]]) -> None:
        self.seqs = [seq for seq, _ in batches]
        self.errors = 0
        self.block_sizes: set[int] = set()
        self.blocks: dict[Any, tuple[int, ...]] = {}
        self.cleared = 0
        for _, payload in batches:
            batch = decode_batch(payload)
            self.errors += batch.errors
            for ev in batch.events:
                if isinstance(ev, Stored):
                    self.block_sizes.add(ev.block_size)
                    self.blocks[ev.block_hash] = ev.token_ids
                elif isinstance(ev, Removed):
                    for h in ev.block_hashes:
                        self.blocks.pop(h, None)
                elif isinstance(ev, Cleared):
                    self.cleared += 1
                    self.blocks.clear()


class Rig:
    """The vLLM server, its publisher's endpoints, the gateway in front, and the test's own log."""

    def __init__(self, server: vllm_fleet.VllmServer, pub_port: int, replay_port: int, block_size: int,
                 gateway: kvroute_proc.KvrouteProcess, ctx: zmq.Context, model_dir: Path) -> None:
        self.server, self.pub_port, self.replay_port, self.block_size = server, pub_port, replay_port, block_size
        self.gateway, self.ctx = gateway, ctx
        self.tokenizer = load_dir(str(model_dir))
        self.seen: list[tuple[str, int, int]] = []  # (what, predicted, reported) of every request

    def backend(self) -> dict[str, Any]:
        (b,) = self.gateway.admin_backends()
        return b

    def published_after(self, seq: int) -> list[tuple[int, bytes]]:
        """The batches the publisher's replay buffer holds above `seq`, (seq, payload) in order:
        vLLM's own record of what it has published."""
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{self.replay_port}")
        try:
            dealer.send_multipart([b"", (seq + 1).to_bytes(8, "big")])
            out = []
            while True:
                assert dealer.poll(timeout=int(WAIT * 1000)), "replay endpoint did not answer"
                frames = dealer.recv_multipart()
                n = int.from_bytes(frames[-2], "big")
                if n == END_SEQ:
                    return out
                out.append((n, frames[-1]))
        finally:
            dealer.close()

    def settle(self) -> dict[str, Any]:
        """Waits until the gateway has applied every batch vLLM published (its last_seq is the
        publisher's last), then returns the backend's admin entry. vLLM queues a request's events
        before it returns the request's output, so after a response nothing of it is still to come."""
        def done() -> bool:
            sub = self.backend()["kv_events"]
            return sub is not None and not self.published_after(sub["last_seq"])
        wait_for(done, "the gateway applied every published batch")
        return self.backend()

    def engine_log(self) -> EngineLog:
        return EngineLog(self.published_after(-1))

    def send(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request through the gateway once the view is current; records prediction and report."""
        self.settle()
        resp = httpx.post(f"{self.gateway.url}/v1/{path}", json={"model": MODEL, **body}, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-kvroute-key-space"] == "tokens"
        out = resp.json()
        usage = out["usage"]
        self.seen.append((what, int(resp.headers["x-kvroute-cached-tokens"]),
                          usage["prompt_tokens_details"]["cached_tokens"]))
        return out

    def check_view(self) -> dict[str, Any]:
        """After settle: the decoder read every batch, and each engine block is one key of the core's
        (its rehash along the parent chain); the core holds the blocks the test's own log holds."""
        b = self.settle()
        log = self.engine_log()
        sub, view = b["kv_events"], b["core"]["kv_events"]
        assert log.seqs == list(range(len(log.seqs))), "the buffer holds every batch from the first"
        assert sub["decode_errors"] == 0 and log.errors == 0, (sub, log.errors)
        assert log.block_sizes <= {self.block_size}
        assert view["orphans"] == 0 and view["block_size_mismatch"] == 0 and view["unknown_removals"] == 0, view
        assert view["confirmed"] and view["confirmed_blocks"] == view["engine_blocks"] == len(log.blocks), view
        return view


@pytest.fixture(scope="module")
def rig(vllm_env: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    logs = tmp_path_factory.mktemp("kv-events")
    pub_port, replay_port = free_port(), free_port()
    server = vllm_fleet.VllmServer(
        vllm_env, model_dir, logs / "vllm.log",
        # vLLM's PUB binds only wildcard endpoints (it connects to any other, see vllm_fleet), and the
        # gateway's SUB connects, as in a deployment; the replay ROUTER always binds, loopback here.
        kv_events_config={"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{pub_port}",
                          "replay_endpoint": f"tcp://127.0.0.1:{replay_port}", "topic": ""},
        # usage.prompt_tokens_details is reported only with this flag; /reset_prefix_cache is served
        # only in dev mode.
        extra_args=("--enable-prompt-tokens-details",),
        extra_env={"VLLM_SERVER_DEV_MODE": "1"},
    )
    vllm_fleet.start_all([server])
    ctx = zmq.Context()
    factory = kvroute_proc.Factory(logs)
    try:
        info = vllm_fleet.metric_samples(server.metrics_text(), "vllm:cache_config_info")
        block_size = int(info[0][0]["block_size"])
        assert info[0][0]["enable_prefix_caching"] == "True"
        gateway = factory.start(
            [server.url], "cost", "--tokenizer", f"{MODEL}={model_dir}", "--block-tokens", str(block_size),
            "--kv-events-endpoints", f"{server.url}=tcp://127.0.0.1:{pub_port}",
            "--kv-events-replay-endpoints", f"{server.url}=tcp://127.0.0.1:{replay_port}", "--debug-headers")
        wait_for(lambda: gateway.admin_backends()[0]["kv_events"] is not None, "the gateway subscribed")
        yield Rig(server, pub_port, replay_port, block_size, gateway, ctx, model_dir)
    finally:
        factory.stop_all()
        server.stop()
        ctx.term()


def exact(rig: Rig, what: str) -> list[tuple[str, int, int]]:
    seen = [s for s in rig.seen if s[0] == what]
    assert seen and all(p == r for _, p, r in seen), seen
    return seen


SYSTEM = "You are a helpful assistant for a serving stack. " + " ".join(
    f"Rule {i}: answer questions about routing, batching and caching clearly." for i in range(25))


def test_growing_conversation(rig: Rig) -> None:
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(5):
        messages.append({"role": "user", "content": f"Question {turn}: how does the key value cache speed up decoding?"})
        body = {"messages": messages, "max_tokens": 48}
        answer = rig.send("conversation", "chat/completions", body)
        # kvroute tokenizes the chat as vLLM does: the same prompt length, the blocks vLLM stored
        # for it are kvroute's blocks of the same ids.
        ids = rig.tokenizer.chat_ids(json.dumps({"model": MODEL, **body}).encode())
        assert answer["usage"]["prompt_tokens"] == len(ids)
        rig.settle()
        stored = set(rig.engine_log().blocks.values())
        full = len(ids) // rig.block_size
        assert all(tuple(ids[i * rig.block_size:(i + 1) * rig.block_size]) in stored for i in range(full))
        messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
    seen = exact(rig, "conversation")
    # Each turn finds every full block of the turns before it (the system prompt spans several).
    assert seen[0][2] == 0 and all(r >= 4 * rig.block_size for _, _, r in seen[1:]), seen
    assert [r for _, _, r in seen] == sorted(r for _, _, r in seen)
    rig.check_view()


TOOLS = [{"type": "function", "function": {
    "name": "get_weather",
    "description": "The current weather for a city, with the temperature in the unit asked for. " * 3,
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}]


def test_chat_with_tools(rig: Rig) -> None:
    """Tool specs and tool-call arguments go through the template's `tojson` (tiny_model's template
    renders them as real templates do): vLLM passes the tools as its pydantic dump and the
    arguments decoded from their JSON string; kvroute must render both byte for byte."""
    messages = [{"role": "system", "content": "You are a helpful assistant who uses tools. " * 8},
                {"role": "user", "content": "What is the weather in Zürich today? Please use the tool."}]
    for turn in range(3):
        # "none": vLLM refuses "auto" without a tool parser; the tools are rendered all the same.
        answer = rig.send("tools", "chat/completions",
                          {"messages": messages, "tools": TOOLS, "tool_choice": "none", "max_tokens": 24})
        call = {"id": f"call_{turn}", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Zürich", "unit": "celsius", "day": turn})}}
        messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"call_{turn}",
                      "content": json.dumps({"temperature": 20 + turn, "sky": "sunny"})},
                     {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
                     {"role": "user", "content": f"And on day {turn + 1}?"}]
    seen = exact(rig, "tools")
    assert all(r >= 4 * rig.block_size for _, _, r in seen[1:]), seen
    rig.check_view()


def test_completions_and_decode_blocks(rig: Rig) -> None:
    """Text prompts sharing a prefix, then a prompt given as token ids that continues an answer:
    the blocks vLLM cached while decoding (the answer's own tokens) are found as well."""
    text = " ".join(f"Completion line {i}: the weather today is sunny with a light breeze." for i in range(30))
    for tail in ("", " and then it rained", " and then it snowed"):
        rig.send("completions", "completions", {"prompt": text + tail, "max_tokens": 8})
    ids = rig.tokenizer.encode_prompt("Decode blocks: " + text[:600])
    out = httpx.post(f"{rig.gateway.url}/v1/completions", timeout=120, json={
        "model": MODEL, "prompt": ids, "max_tokens": 2 * rig.block_size, "ignore_eos": True,
        "return_token_ids": True})
    assert out.status_code == 200, out.text
    generated = out.json()["choices"][0]["token_ids"]
    assert len(generated) == 2 * rig.block_size
    continued = ids + generated
    rig.send("decode", "completions", {"prompt": continued, "max_tokens": 4})
    exact(rig, "completions")
    (decode,) = exact(rig, "decode")
    # Every full block before the last token: the prompt's and those filled by generated tokens
    # (vLLM computed the KV of every generated token but the last).
    assert decode[2] == (len(continued) - 1) // rig.block_size * rig.block_size > len(ids)
    rig.check_view()


def test_reset_prefix_cache_empties_the_view(rig: Rig) -> None:
    before = rig.check_view()
    assert before["confirmed_blocks"] > 0
    resp = httpx.post(rig.server.url + "/reset_prefix_cache", timeout=60)
    assert resp.status_code == 200, resp.text
    # vLLM queues AllBlocksCleared and publishes it with its engine's next step: an idle engine
    # says nothing yet, so the view still holds every block.
    assert rig.settle()["core"]["kv_events"]["confirmed_blocks"] == before["confirmed_blocks"]
    # A request shorter than a block (directly to vLLM) makes it step without storing a block.
    short = httpx.post(rig.server.url + "/v1/completions", timeout=60,
                       json={"model": MODEL, "prompt": "hello", "max_tokens": 2})
    assert short.status_code == 200, short.text
    view = rig.check_view()
    assert view["confirmed_blocks"] == view["engine_blocks"] == 0 and view["cleared"] == 1, view
    assert rig.engine_log().cleared == 1
    # The conversation's first turn again: nothing cached, as predicted; then cached, as predicted.
    body = {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": "Question 0: how does the key value cache speed up decoding?"}],
            "max_tokens": 8}
    for _ in range(2):
        rig.send("after reset", "chat/completions", body)
    seen = exact(rig, "after reset")
    assert seen[0][2] == 0 and seen[1][2] > 0, seen


def test_restart_rebuilds_the_view(rig: Rig) -> None:
    """Last: it kills the server. Same ports after the restart; the new publisher counts from 0."""
    rig.check_view()
    body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Before the restart."}],
            "max_tokens": 8}
    for _ in range(2):
        rig.send("before restart", "chat/completions", body)
    assert exact(rig, "before restart")[1][2] > 0
    resets = rig.backend()["kv_events"]["resets"]
    rig.server.kill()
    # The gateway's health checks see it down and drop its view (kv_feed): the new engine's cache
    # is empty, and vLLM will say so only at its first step.
    wait_for(lambda: (lambda b: not b["healthy"] and b["core"]["kv_events"]["confirmed_blocks"] == 0
                      and b["kv_events"]["resets"] == resets + 1)(rig.backend()), "view dropped while down")
    vllm_fleet.start_all([rig.server])
    wait_for(lambda: rig.backend()["healthy"], "healthy again", timeout=vllm_fleet.STARTUP_TIMEOUT)
    # The first request after the restart: predicted from the empty view, as vLLM answers it. The
    # gateway's SUB reconnects a little after the new PUB binds, so its first batch may be lost to
    # it; the next one shows the gap and the replay buffer fills it.
    rig.seen.append(("after restart", *_through_gateway(rig, body)))
    for k in range(20):
        if rig.backend()["kv_events"]["confirmed"]:
            break
        _through_gateway(rig, {"prompt": f"new blocks {k} " + SYSTEM, "max_tokens": 2}, "completions")
    for _ in range(2):
        rig.send("after restart", "chat/completions", body)
    seen = exact(rig, "after restart")
    assert seen[0][2] == 0 and seen[-1][2] > 0, seen
    sub = rig.check_view()
    assert sub["confirmed_blocks"] > 0


def _through_gateway(rig: Rig, body: dict[str, Any], path: str = "chat/completions") -> tuple[int, int]:
    """One request without waiting for the view first (the restart test's own pacing)."""
    resp = httpx.post(f"{rig.gateway.url}/v1/{path}", json={"model": MODEL, **body}, timeout=120)
    assert resp.status_code == 200, resp.text
    return (int(resp.headers["x-kvroute-cached-tokens"]),
            resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
