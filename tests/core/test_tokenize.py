"""Token-exact block keys: the core's tokenizer and chat template give the ids the simulator's
model of vLLM gives (its JinjaChat with transformers' Jinja settings, and the HF tokenizer), and
the router keys requests with them. The tokenizer is a byte-level BPE trained here."""

from __future__ import annotations

import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from kvroute import model_tokenizers
from kvroute._native import KEY_SPACES, MalformedRequest, Router, Tokenizer
from kvroute.config import ConfigError, Settings, validate
from kvroute.sim.chat_template import _environment, load_chat
from kvroute.sim.tokenizer import HFTokenizer, chat_messages
from tests import tiny_chatml
from tests.procs import serve_process
from tests.tiny_chatml import TEMPLATE

BLOCK = 4
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chatml.build(tmp_path_factory.mktemp("tiny-chatml"))


def vllm_ids(model_dir: Path, body: dict[str, Any]) -> list[int]:
    """What vLLM 0.32 tokenizes for a chat body, after the simulator's model of it: plain chats
    through its JinjaChat; with tools or chat_template_kwargs (which JinjaChat does not take), the
    same Jinja environment with vLLM's tool dicts and decoded tool-call arguments."""
    hf = HFTokenizer(str(model_dir))
    if "tools" not in body and "chat_template_kwargs" not in body:
        return load_chat(hf, str(model_dir), "chatml").prompt_ids(body["messages"])
    msgs = chat_messages(copy.deepcopy(body["messages"]))
    for m in msgs:
        for call in m.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    tools = [{"type": "function", "function": {"name": t["function"]["name"],
                                               "description": t["function"].get("description"),
                                               "parameters": t["function"].get("parameters")}}
             for t in body.get("tools", [])] or None
    text = _environment().from_string(TEMPLATE).render(
        messages=msgs, tools=tools, documents=None, add_generation_prompt=True,
        bos_token="<|bos|>", eos_token="<|im_end|>", **body.get("chat_template_kwargs", {}))
    return hf.encode(text)


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": messages, **extra}


TURNS = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And the quick brown fox? ünïcode ✓  "},
    {"role": "assistant", "content": "It jumps over the lazy dog.\n"},
    {"role": "user", "content": "Twice: 1 2 3 4 5"},
]


def test_core_ids_equal_the_simulators_for_a_growing_conversation(model_dir: Path) -> None:
    tok = model_tokenizers.load_dir(str(model_dir))
    assert tok.per_message and tok.has_chat_template
    for upto in (2, 4, 6):
        body = chat(TURNS[:upto])
        before = tok.encoded_bytes
        assert tok.chat_ids(json.dumps(body).encode()) == vllm_ids(model_dir, body), upto
        if upto > 2:
            # Only the new turns and the generation prompt were tokenized, not the whole history.
            assert tok.encoded_bytes - before < len(json.dumps(TURNS[upto - 2:upto])) + 60
    assert tok.cached_tokens > 0


def test_tools_and_chat_template_kwargs(model_dir: Path) -> None:
    tok = model_tokenizers.load_dir(str(model_dir))
    tools = [{"type": "function", "function": {"name": "weather", "description": "Get the weather",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]
    msgs = [*TURNS[:2], {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    for body in (chat(msgs, tools=tools), chat(TURNS[:2], chat_template_kwargs={"enable_thinking": False}),
                 chat(msgs, tools=tools, chat_template_kwargs={"enable_thinking": False})):
        ids = tok.chat_ids(json.dumps(body).encode())
        assert ids == vllm_ids(model_dir, body)
    plain = tok.chat_ids(json.dumps(chat(TURNS[:2])).encode())
    thinking_off = tok.chat_ids(json.dumps(chat(TURNS[:2], chat_template_kwargs={"enable_thinking": False})).encode())
    assert thinking_off[:len(plain)] == plain and len(thinking_off) > len(plain)


def test_completions_text_gets_the_tokenizers_special_tokens(model_dir: Path) -> None:
    tok = model_tokenizers.load_dir(str(model_dir))
    text = "The quick brown fox jumps over the lazy dog"
    assert tok.encode_prompt(text) == HFTokenizer(str(model_dir)).encode_prompt(text, "chatml")
    assert tok.encode_prompt(text)[0] == 0  # <|bos|>


def test_router_keys_requests_by_tokens_and_the_next_turn_finds_the_last(model_dir: Path) -> None:
    r = Router("cost", block_tokens=BLOCK)
    r.upsert_backend("b", models=["tiny"], healthy=True)
    model_tokenizers.apply(r, {"tiny": str(model_dir)})
    assert r.tokenizer_models() == ["tiny"]
    prev: list[int] = []
    for upto in (2, 4, 6):
        body = chat(TURNS[:upto])
        ids = vllm_ids(model_dir, body)
        d = r.route(json.dumps(body).encode())
        assert d.key_space == "tokens" and d.prompt_tokens == len(ids)
        assert ids[:len(prev)] == prev  # the simulator agrees that the conversation only grows
        # Turn N+1 finds every full block of turn N's prompt on the backend that took it.
        assert d.cached_tokens == len(prev) // BLOCK * BLOCK
        r.release(d.ticket, True, d.prompt_tokens, d.cached_tokens, 3, 0.1)
        prev = ids
    d = r.route(json.dumps({"model": "tiny", "prompt": "The quick brown fox"}).encode(), "completions")
    assert (d.key_space, d.prompt_tokens) == ("tokens", len(HFTokenizer(str(model_dir)).encode_prompt("The quick brown fox", "")))
    image = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}])
    assert r.route(json.dumps(image).encode()).key_space == "bytes:tokenize_failed"
    r.upsert_backend("b", models=["tiny", "other"])
    assert r.route(json.dumps({**chat(TURNS[:2]), "model": "other"}).encode()).key_space == "bytes"
    r.set_tokenizer("tiny", None)
    assert r.route(json.dumps(chat(TURNS[:2])).encode()).key_space == "bytes"
    assert set(KEY_SPACES) == {"tokens", "bytes", "bytes:tokenize_failed"}


def test_bad_directories_are_config_errors(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        validate(Settings(tokenizer={"m": str(tmp_path)}))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match="tokenizer"):
        validate(Settings(tokenizer={"m": str(tmp_path)}))
    with pytest.raises(ConfigError, match="not a directory"):
        validate(Settings(tokenizer={"m": str(tmp_path / "missing")}))
    bad_template = tmp_path / "t"
    bad_template.mkdir()
    (bad_template / "tokenizer.json").write_text((model_dir / "tokenizer.json").read_text())
    (bad_template / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(ConfigError, match="chat template"):
        validate(Settings(tokenizer={"m": str(bad_template)}))
    with pytest.raises(MalformedRequest):
        Tokenizer((model_dir / "tokenizer.json").read_text(), None, "{{ raise_exception('no') }}").chat_ids(
            json.dumps(chat(TURNS[:2])).encode())


async def test_serve_refuses_a_bad_directory_and_starts_workers_with_a_good_one(model_dir: Path, tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "serve", "--port", "0", "--admin-port", "0",
        "--tokenizer", f"tiny={tmp_path}", stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0 and b"no tokenizer.json" in err
    # Two workers, the flag repeated: each worker loads the directory and serves.
    async with serve_process("--tokenizer", f"tiny={model_dir}", "--tokenizer", f"tiny-lora={model_dir}", workers=2):
        pass
