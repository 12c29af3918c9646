"""Measure one running vLLM server and write a `kvroute sim` profile from it.

    python -m bench.gpu_profile --url http://gpu-1:8000 --model-config config.json --out my-gpu.yaml
    kvroute sim --profile my-gpu.yaml

The simulator's step model (kvroute/sim/profiles.py) is
    step = step_overhead_s + new_tokens / prefill_tokens_per_s + (weights + KV read) / memory_bandwidth.
Two of its numbers are measured here and one is taken as given:

- prefill_tokens_per_s: the slope of time against prompt length, over several unique prompts (a fresh
  nonce first, so prefix caching cannot help), each answered with one token;
- step_overhead_s: a single stream's time per decoded token, less what its prefill term and its memory
  term (at the given bandwidth) explain;
- memory_bandwidth: the GPU's achieved bandwidth, `--memory-bandwidth` (datasheet figure x ~0.9), or
  the base profile's. One stream cannot tell a slow memory from a slow step; the overhead absorbs it.

The model's shape (parameters, layers, KV heads, head size) comes from its Hugging Face config.json
(`--model-config`) or a built-in base profile (`--base`); block size, KV blocks and context length come
from the server itself (/metrics, /v1/models). Plain urllib: one request at a time, nothing else
should load the server meanwhile.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvroute.control.metrics import parse_metrics
from kvroute.sim.profiles import BUILTIN, load_profile

DEFAULT_LENGTHS = (256, 1024, 2048)


def model_shape(config: dict[str, Any]) -> dict[str, Any]:
    """Profile shape fields from a Llama/Qwen-style config.json; the parameter count is what the
    weights hold (embeddings, attention and MLP projections, norms; Qwen2's q/k/v biases)."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    qkv_bias = config.get("attention_bias", config.get("model_type") == "qwen2")
    per_layer = hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * config["intermediate_size"] + 2 * hidden
    per_layer += (q + 2 * kv) if qkv_bias else 0
    embeddings = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return {"params": float(layers * per_layer + embeddings + hidden), "num_layers": layers,
            "num_kv_heads": kv_heads, "head_dim": head_dim}


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = intercept + slope * x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(set(xs)) < 2:
        raise ValueError("need prompts of at least two different lengths")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


@dataclass(frozen=True)
class Measurement:
    prefill: list[tuple[int, float]]  # (prompt tokens, seconds to a one-token answer)
    decode_step_s: float  # one stream's time per generated token after the first
    decode_context: int  # mean tokens of context those steps read
    block_size: int | None
    num_gpu_blocks: int | None
    max_model_len: int | None
    served_model: str


def profile_fields(shape: dict[str, Any], measured: Measurement, memory_bandwidth: float,
                   bytes_per_param: float = 2.0) -> dict[str, Any]:
    """The profile's fields from the measurement (see the module's docstring for which are fitted)."""
    _, seconds_per_token = fit_line([(float(n), t) for n, t in measured.prefill])
    if seconds_per_token <= 0:
        raise ValueError(f"prompt time does not grow with length: {measured.prefill}")
    rate = 1.0 / seconds_per_token
    kv_bytes_per_token = 2 * shape["num_layers"] * shape["num_kv_heads"] * shape["head_dim"] * 2
    memory_s = (shape["params"] * bytes_per_param + kv_bytes_per_token * measured.decode_context) / memory_bandwidth
    overhead = max(0.0, measured.decode_step_s - 1.0 / rate - memory_s)
    fields: dict[str, Any] = {**shape, "bytes_per_param": bytes_per_param, "prefill_tokens_per_s": round(rate, 1),
                              "memory_bandwidth": memory_bandwidth, "step_overhead_s": round(overhead, 6)}
    for key in ("block_size", "num_gpu_blocks", "max_model_len"):
        if getattr(measured, key):
            fields[key] = getattr(measured, key)
    points = ", ".join(f"{n} tok {t * 1000:.1f} ms" for n, t in measured.prefill)
    fields["sources"] = (f"bench.gpu_profile against {measured.served_model}: one-token answers ({points}); "
                         f"decode {measured.decode_step_s * 1000:.2f} ms/token at batch 1, context "
                         f"{measured.decode_context}; memory_bandwidth given, not measured")
    return fields


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 600.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


def unique_prompt(words: int) -> str:
    # A random nonce first: no two prompts share a first block, so nothing comes from the prefix cache.
    return secrets.token_hex(8) + " " + " ".join(f"w{secrets.randbelow(10_000)}" for _ in range(words))


def _complete(url: str, model: str, words: int, max_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    with _request(f"{url}/v1/completions", {"model": model, "prompt": unique_prompt(words), "max_tokens": max_tokens,
                                            "temperature": 0, "ignore_eos": True}) as resp:
        usage = json.loads(resp.read())["usage"]
    return usage["prompt_tokens"], time.perf_counter() - start


def _decode_step(url: str, model: str, words: int, tokens: int) -> tuple[float, int]:
    """Time per token of one streamed answer: first to last chunk over the tokens between them, so
    chunks that carry several tokens do not skew it."""
    body = {"model": model, "prompt": unique_prompt(words), "max_tokens": tokens, "min_tokens": tokens, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    first = last = None
    usage: dict[str, int] = {}
    with _request(f"{url}/v1/completions", body) as resp:
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices") and event["choices"][0].get("text"):
                last = time.perf_counter()
                first = first or last
    generated = usage.get("completion_tokens", 0)
    if first is None or last is None or generated < 3 or last <= first:
        raise RuntimeError(f"the stream gave too little to time (usage {usage})")
    return (last - first) / (generated - 1), usage["prompt_tokens"] + generated // 2


def measure(url: str, lengths: tuple[int, ...] = DEFAULT_LENGTHS, repeats: int = 3, decode_tokens: int = 64,
            model: str | None = None) -> Measurement:
    url = url.rstrip("/")
    with _request(f"{url}/v1/models") as resp:
        listed = json.loads(resp.read())["data"][0]
    model = model or listed["id"]
    max_len = listed.get("max_model_len")
    # Tokens per word for this tokenizer, from one small probe (which also warms the server up).
    probe_tokens, _ = _complete(url, model, 64, 1)
    per_word = probe_tokens / 65
    points = []
    for length in lengths:
        if max_len and length + 8 > max_len:
            continue
        words = max(1, int(length / per_word))
        samples = [_complete(url, model, words, 1) for _ in range(repeats)]
        points.append((int(statistics.median(n for n, _ in samples)), statistics.median(t for _, t in samples)))
    steps = [_decode_step(url, model, max(1, int(128 / per_word)), decode_tokens) for _ in range(repeats)]
    with _request(f"{url}/metrics") as resp:
        metrics = parse_metrics(resp.read().decode())
    return Measurement(prefill=points, decode_step_s=statistics.median(s for s, _ in steps),
                       decode_context=int(statistics.median(c for _, c in steps)), block_size=metrics.block_size,
                       num_gpu_blocks=metrics.num_gpu_blocks, max_model_len=max_len, served_model=model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the vLLM server's base URL (no other load on it meanwhile)")
    p.add_argument("--out", required=True, type=Path, help="profile YAML to write (kvroute sim --profile FILE)")
    p.add_argument("--base", default="qwen2.5-1.5b-l4", choices=sorted(BUILTIN),
                   help="built-in profile the file extends (shape, when no --model-config; chat template; limits)")
    p.add_argument("--model-config", type=Path, help="the model's config.json (its shape replaces the base's)")
    p.add_argument("--model", help="model name to request (default: the first /v1/models lists)")
    p.add_argument("--memory-bandwidth", type=float, help="achieved bytes/s (default: the base profile's)")
    p.add_argument("--bytes-per-param", type=float, default=2.0, help="2 for bf16/fp16 weights")
    p.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="prompt lengths, tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--name", help="profile name (default: the file's stem)")
    args = p.parse_args(argv)

    base = BUILTIN[args.base]
    shape = (model_shape(json.loads(args.model_config.read_text())) if args.model_config else
             {k: getattr(base, k) for k in ("params", "num_layers", "num_kv_heads", "head_dim")})
    measured = measure(args.url, tuple(int(x) for x in args.lengths.split(",")), args.repeats, args.decode_tokens,
                       args.model)
    fields = profile_fields(shape, measured, args.memory_bandwidth or base.memory_bandwidth, args.bytes_per_param)
    document = {"base": args.base, "name": args.name or args.out.stem,
                "description": f"measured from {args.url} ({measured.served_model})", **fields}
    args.out.write_text(yaml.safe_dump(document, sort_keys=False))
    load_profile(str(args.out))  # what `kvroute sim --profile` will do: fail here, not there
    print(yaml.safe_dump(document, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
