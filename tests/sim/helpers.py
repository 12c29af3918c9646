"""Helpers for the simulator tests."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from kvroute.sse_lines import split_events


async def sse_events(resp: aiohttp.ClientResponse) -> list[Any]:
    """Parse an SSE body into JSON events (and the literal "[DONE]")."""
    frames, rest = split_events(await resp.read())
    assert frames and rest == b""  # a whole stream: ends with a blank line
    out: list[Any] = []
    for frame in frames:
        assert frame.startswith(b"data: "), frame
        payload = frame[len(b"data: "):].decode()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A minimal Prometheus text parser (names with labels -> value), enough for assertions."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        if "{" in series:
            name, labels = series.split("{", 1)
            pairs = frozenset(tuple(p.split("=", 1)) for p in labels.rstrip("}").split(",") if p)
            pairs = frozenset((k, v.strip('"')) for k, v in pairs)
        else:
            name, pairs = series, frozenset()
        out[(name, pairs)] = float(value)
    return out


def metric(metrics: dict, name: str, **labels: str) -> float:
    total = 0.0
    found = False
    for (n, pairs), v in metrics.items():
        if n == name and all((k, str(val)) in pairs for k, val in labels.items()):
            total += v
            found = True
    assert found, f"{name} {labels} not in metrics"
    return total


def write_bpe_tokenizer(path: str, corpus: list[str], special_tokens: list[str], vocab_size: int = 400,
                        bos_token: str | None = None) -> str:
    """Train a small byte-level BPE (every byte in the alphabet: any text tokenizes) and save it;
    with `bos_token`, encoding with special tokens puts it in front, as Llama's tokenizer does."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos_token is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", special_tokens=[(bos_token, tok.token_to_id(bos_token))])
    tok.save(path)
    return path
