"""--tokenizer with a real `tokenizers` file, chat templates, and the router's metrics parser
reading the simulator's /metrics."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from tokenizers import Tokenizer

from kvroute.control.metrics import parse_metrics as router_parse
from kvroute.sim import SimFleet
from kvroute.sim.tokenizer import HashTokenizer, TemplateError, apply_chat_template

from tests.waiting import eventually

from .helpers import write_bpe_tokenizer

CORPUS = ["the quick brown fox jumps over the lazy dog", "a cat sat on the mat and the sun set",
          "you can see how far the road goes", "one two big red key map log set get put add"] * 20


@pytest.fixture
def tokenizer_json(tmp_path) -> str:
    return write_bpe_tokenizer(str(tmp_path / "tokenizer.json"), CORPUS, ["<|im_start|>", "<|im_end|>"])


async def test_real_tokenizer_counts(http: aiohttp.ClientSession, tokenizer_json: str) -> None:
    tok = Tokenizer.from_file(tokenizer_json)
    msgs = [{"role": "user", "content": "the quick brown fox"}]
    expected = len(tok.encode(apply_chat_template("chatml", msgs), add_special_tokens=False).ids)
    async with SimFleet(instances=1, per_token_delay=0.001, tokenizer=tokenizer_json) as fleet:
        async with http.post(fleet.urls[0] + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 6}) as r:
            body = await r.json()
        assert body["usage"]["prompt_tokens"] == expected
        text = body["choices"][0]["message"]["content"]
        assert text and len(tok.encode(text, add_special_tokens=False).ids) == 6
        async with http.post(fleet.urls[0] + "/v1/completions", json={"prompt": "the lazy dog", "max_tokens": 1}) as r:
            assert (await r.json())["usage"]["prompt_tokens"] == len(tok.encode("the lazy dog").ids)


def test_chat_templates() -> None:
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert apply_chat_template("chatml", msgs) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    llama = apply_chat_template("llama3", [{"role": "system", "content": "S"}] + msgs)
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert llama.endswith("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n")
    for bad in ([], [{"content": "x"}], [{"role": "wizard", "content": "x"}],
                [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises(TemplateError):
            apply_chat_template("chatml", bad)


def test_hash_tokenizer() -> None:
    tok = HashTokenizer()
    text = "Routing decisions only matter under the behaviour of a real engine: continuous batching."
    ids = tok.encode(text)
    assert ids == HashTokenizer().encode(text)  # stable across instances (and processes: crc32)
    assert 3.0 <= len(text.encode()) / len(ids) <= 5.0
    assert tok.encode(text + " More.")[: len(ids)] == ids
    assert len(tok.encode("<|im_start|>")) == 1
    out = tok.output_ids()
    assert tok.encode("".join(tok.decode_one(i) for i in out)) == out


async def test_router_parser_reads_sim_metrics(http: aiohttp.ClientSession) -> None:
    async with SimFleet(instances=1, per_token_delay=0.002, num_gpu_blocks=500) as fleet:
        url = fleet.urls[0]
        eng = fleet.instances[0].engine
        for _ in range(2):
            async with http.post(url + "/v1/completions", json={"prompt": list(range(100)), "max_tokens": 3}) as r:
                assert r.status == 200
        stream = await http.post(url + "/v1/completions",
                                 json={"prompt": list(range(500, 900)), "max_tokens": 5000, "stream": True})
        await stream.content.readuntil(b"\n\n")
        eng.pause()  # freeze the engine (after the step in flight) so both reads agree
        steps = eng.stats.steps
        await eventually(lambda: eng.stats.steps > steps)
        async with http.get(url + "/metrics") as r:
            parsed = router_parse(await r.text())
        st = eng.state()
        assert parsed.running == st["running"] == 1
        assert parsed.waiting == st["waiting"] == 0
        assert parsed.kv_usage == pytest.approx(st["kv_cache_usage_perc"]) and parsed.kv_usage > 0
        assert parsed.prefix_queries == st["prefix_cache_queries"] == 600
        assert parsed.prefix_hits == st["prefix_cache_hits"] == 96
        assert parsed.prompt_tokens == st["prompt_tokens"]
        assert parsed.generation_tokens == st["generation_tokens"]
        assert (parsed.num_gpu_blocks, parsed.block_size) == (500, 16)
        stream.close()


def families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Metric family -> (type, label names of its samples) from a Prometheus text page."""
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            name, _, rest = series.partition("{")
            keys = {kv.split("=", 1)[0] for kv in rest.rstrip("}").split('",') if kv}
            family = next((f for f in (name, name.rsplit("_", 1)[0]) if f in types), name)
            labels.setdefault(family, set()).update(keys)
    return {f: (types[f], frozenset(labels.get(f, ()))) for f in types}


async def test_metrics_page_matches_real_vllm_format(http: aiohttp.ClientSession) -> None:
    real_text = (Path(__file__).parents[1] / "fixtures" / "vllm-0.32-metrics.txt").read_text()
    real = families(real_text)
    async with SimFleet(instances=1, per_token_delay=0.001) as fleet:
        async with http.post(fleet.urls[0] + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}) as r:
            assert r.status == 200
        async with http.get(fleet.urls[0] + "/metrics") as r:
            sim_text = await r.text()
    sim = families(sim_text)
    for name, (kind, keys) in sim.items():
        assert name in real, name
        assert real[name][0] == kind, name
        if name != "vllm:cache_config_info":  # the simulator carries a subset of CacheConfig
            assert real[name][1] == keys, name
        else:
            assert keys <= real[name][1]
    # Line for line the same shape: label order, float format, _created gauges.
    for line in sim_text.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_bucket") and 'le="0.001"' in line:
            assert line.startswith('vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name=')
    # The router reads both pages into the same fields.
    a, b = router_parse(real_text), router_parse(sim_text)
    assert {k for k, v in vars(a).items() if v is None} == {k for k, v in vars(b).items() if v is None}


def test_segment_encoding_equals_full_text() -> None:
    from kvroute.sim.tokenizer import render_chat

    tok = HashTokenizer()
    msgs = [{"role": "system", "content": "Be brief.  \n"}, {"role": "user", "content": " 123 x!"},
            {"role": "assistant", "content": "\n\n ok"}, {"role": "user", "content": ""}]
    for template in ("chatml", "llama3"):
        segs = render_chat(template, msgs)
        assert tok.encode_segments(segs) == tok.encode("".join(segs))
        assert tok.encode_segments(segs) == tok.encode("".join(segs))  # memoized
