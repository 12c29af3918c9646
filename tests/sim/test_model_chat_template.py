"""A model directory's own Jinja chat template (--tokenizer, --chat-template), through real sockets."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from kvroute.sim import SimFleet
from kvroute.sim.chat_template import BuiltinChat, JinjaChat, load_chat
from kvroute.sim.tokenizer import HashTokenizer

from tests.procs import sim_process

from .helpers import metric, parse_metrics, write_bpe_tokenizer

SPECIALS = ["<|bos|>", "<|eos|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CORPUS = ["You are a helpful assistant that answers in short sentences.",
          "The key value cache speeds up decoding; a router sends each request where its prefix is cached.",
          "user: how does prefix caching work? assistant: blocks of tokens are hashed and reused."] * 10
# Llama-style, written the way model templates are: block tags on their own, indented lines, so the
# rendering depends on trim_blocks and lstrip_blocks; the BOS comes from the template itself.
TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Only system, user and assistant roles are supported!') }}
    {% endif %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>
{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""
SYSTEM = {"role": "system", "content": "You are a helpful assistant that answers in short sentences. " * 6}


def write_model_dir(d: Path, config: dict) -> str:
    """A model directory as HF saves one: tokenizer.json plus tokenizer_config.json (with `config`)."""
    d.mkdir(exist_ok=True)
    tokenizer = write_bpe_tokenizer(str(d / "tokenizer.json"), CORPUS, SPECIALS, bos_token="<|bos|>")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|bos|>", "eos_token": {"content": "<|eos|>", "special": True}, **config}))
    return tokenizer


@pytest.fixture
def model_dir(tmp_path: Path) -> str:
    return write_model_dir(tmp_path / "model", {"chat_template": TEMPLATE})


def direct_prompt_tokens(tokenizer_json: str, messages: list[dict], add_special_tokens: bool = False) -> int:
    """What HF transformers (and so vLLM) compute: the template rendered in a sandbox with
    trim_blocks and lstrip_blocks, then encoded without adding special tokens."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(TEMPLATE).render(messages=messages, add_generation_prompt=True,
                                            bos_token="<|bos|>", eos_token="<|eos|>")
    return len(Tokenizer.from_file(tokenizer_json).encode(text, add_special_tokens=add_special_tokens).ids)


async def chat(http: aiohttp.ClientSession, url: str, messages: list[dict], max_tokens: int = 4,
               status: int = 200) -> dict:
    async with http.post(url + "/v1/chat/completions", json={"messages": messages, "max_tokens": max_tokens}) as r:
        body = await r.json()
        assert r.status == status, body
        return body


async def test_prompt_tokens_match_the_model_template(http: aiohttp.ClientSession, model_dir: str) -> None:
    msgs = [SYSTEM, {"role": "user", "content": [{"type": "text", "text": "How does prefix caching work?"}]}]
    flat = [SYSTEM, {"role": "user", "content": "How does prefix caching work?"}]
    expected = direct_prompt_tokens(model_dir, flat)
    # The template writes the BOS; encoding with the tokenizer's own special tokens would double it.
    assert direct_prompt_tokens(model_dir, flat, add_special_tokens=True) == expected + 1
    async with SimFleet(instances=1, per_token_delay=0.001, tokenizer=model_dir) as fleet:
        body = await chat(http, fleet.urls[0], msgs)
        assert body["usage"]["prompt_tokens"] == expected
        assert fleet.chat is not None and fleet.chat.source.endswith("tokenizer_config.json")


async def test_template_errors_are_400(http: aiohttp.ClientSession, model_dir: str, tmp_path: Path) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001, tokenizer=model_dir) as fleet:
        body = await chat(http, fleet.urls[0], [{"role": "tool", "content": "42"}], status=400)
        assert body == {"error": {"message": "Only system, user and assistant roles are supported!",
                                  "type": "BadRequestError", "param": None, "code": 400}}
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for message in messages %}{{ message['content'] }}")  # no endfor
    # Like vLLM, the server starts with a broken template and refuses each chat request.
    async with SimFleet(instances=1, per_token_delay=0.001, tokenizer=model_dir, chat_template=str(broken)) as fleet:
        body = await chat(http, fleet.urls[0], [{"role": "user", "content": "hi"}], status=400)
        assert body["error"]["type"] == "BadRequestError" and "endfor" in body["error"]["message"]
        async with http.post(fleet.urls[0] + "/v1/completions", json={"prompt": "hi", "max_tokens": 1}) as r:
            assert r.status == 200


async def test_next_turn_hits_the_prefix_cache(http: aiohttp.ClientSession, model_dir: str) -> None:
    async with SimFleet(instances=1, per_token_delay=0.001, tokenizer=model_dir) as fleet:
        url = fleet.urls[0]
        msgs = [SYSTEM, {"role": "user", "content": "How does prefix caching work?"}]
        first = await chat(http, url, msgs, max_tokens=12)
        async with http.get(url + "/metrics") as r:
            hits_before = metric(parse_metrics(await r.text()), "vllm:prefix_cache_hits_total")
        msgs += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "And the router?"}]
        second = await chat(http, url, msgs)
        async with http.get(url + "/metrics") as r:
            hits_after = metric(parse_metrics(await r.text()), "vllm:prefix_cache_hits_total")
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        # At least every full block of the first prompt (the system prompt spans several).
        assert cached >= first["usage"]["prompt_tokens"] // 16 * 16 > 0
        assert hits_after - hits_before == cached
        assert second["usage"]["prompt_tokens"] == direct_prompt_tokens(model_dir, msgs)


def test_where_the_template_comes_from(tmp_path: Path, model_dir: str) -> None:
    tok = HashTokenizer()
    # tokenizer_config.json's string form; the directory works as --tokenizer too.
    for path in (model_dir, str(Path(model_dir).parent)):
        found = load_chat(tok, path, "chatml")
        assert isinstance(found, JinjaChat) and found.source.endswith("tokenizer_config.json")
    # The list form: the template named "default".
    listed = write_model_dir(tmp_path / "listed", {"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}]})
    assert load_chat(tok, listed, "chatml").render([{"role": "user", "content": "x"}]) == "D<|bos|>"
    # chat_template.jinja beats tokenizer_config.json, as in transformers.
    (tmp_path / "listed" / "chat_template.jinja").write_text("J")
    assert load_chat(tok, listed, "chatml").render([{"role": "user", "content": "x"}]) == "J"
    # --chat-template beats both: a file, an inline template, or a built-in name.
    override = tmp_path / "override.jinja"
    override.write_text("O")
    assert load_chat(tok, listed, str(override), model_first=False).source == str(override)
    assert load_chat(tok, listed, "{{ eos_token }}", model_first=False).render([{"role": "user", "content": "x"}]) == "<|eos|>"
    assert isinstance(load_chat(tok, listed, "llama3", model_first=False), BuiltinChat)
    # No template beside the tokenizer (or no tokenizer): the profile's built-in one.
    bare = write_bpe_tokenizer(str(tmp_path / "tokenizer.json"), CORPUS, SPECIALS)
    assert load_chat(tok, bare, "llama3").source == "llama3"
    assert load_chat(tok, None, "chatml").source == "chatml"
    with pytest.raises(ValueError, match="neither built-in"):
        load_chat(tok, None, str(tmp_path / "missing.jinja"), model_first=False)


async def test_cli_chat_template_flag(http: aiohttp.ClientSession, model_dir: str, tmp_path: Path) -> None:
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")
    async with sim_process("--base-port", "0", "--per-token-delay", "0.001", "--tokenizer", str(Path(model_dir).parent),
                           "--chat-template", str(template)) as (_, info):
        assert info["chat_template"] == str(template)
        body = await chat(http, info["urls"][0], [{"role": "user", "content": "hi"}])
        expected = Tokenizer.from_file(model_dir).encode("user: hi\nassistant:", add_special_tokens=False).ids
        assert body["usage"]["prompt_tokens"] == len(expected)
