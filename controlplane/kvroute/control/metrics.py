"""Pure parser: a vLLM `/metrics` page (Prometheus text format) to the backend state the router needs.

vLLM has renamed its metrics across releases, so every quantity is read under each of its names (the
V1 name first). A server running several engines (data parallel) or label sets writes one sample per
label set: counts and counters are summed, the KV usage fraction is averaged, so the result describes
the whole server. Only the handful of families the router uses are parsed; everything else on the page
(histograms make most of it) is never looked at, because this runs for every backend on every poll.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator

RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PROMPT_TOKENS = ("vllm:prompt_tokens_total",)
GENERATION_TOKENS = ("vllm:generation_tokens_total",)
CACHE_CONFIG = "vllm:cache_config_info"

_WANTED = frozenset(RUNNING + WAITING + KV_USAGE + PREFIX_QUERIES + PREFIX_HITS + PROMPT_TOKENS
                    + GENERATION_TOKENS + (CACHE_CONFIG,))


_NUM_GPU_BLOCKS = re.compile(r'(?:^|[,{\s])num_gpu_blocks\s*=\s*"([^"]*)"')
_BLOCK_SIZE = re.compile(r'(?:^|[,{\s])block_size\s*=\s*"([^"]*)"')


def _label(labels: str, pattern: re.Pattern[str]) -> str | None:
    match = pattern.search(labels)
    return match.group(1) if match else None


class MetricsParseError(ValueError):
    """The page is not a vLLM metrics page (no known family on it), e.g. an error page from a proxy."""


@dataclass(frozen=True)
class BackendMetrics:
    """One backend's state as read from one page; None where the page did not carry the quantity."""

    running: int | None = None
    waiting: int | None = None
    kv_usage: float | None = None
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    num_gpu_blocks: int | None = None
    block_size: int | None = None

    @property
    def prefix_hit_rate(self) -> float | None:
        if not self.prefix_queries or self.prefix_hits is None:
            return None
        return self.prefix_hits / self.prefix_queries

    def counters(self) -> tuple[float | None, ...]:
        return (self.prefix_queries, self.prefix_hits, self.prompt_tokens, self.generation_tokens)


def _split_sample(line: str) -> tuple[str, str, str] | None:
    """`name{labels} value [timestamp]` -> (name, labels text, value text)."""
    brace = line.find("{")
    if brace >= 0:
        close = line.rfind("}")
        if close < brace:
            return None
        name, labels, rest = line[:brace], line[brace + 1:close], line[close + 1:]
    else:
        name, _, rest = line.partition(" ")
        labels = ""
    fields = rest.split()
    if not fields:
        return None
    return name.strip(), labels, fields[0]


def _first(sums: dict[str, list[float]], names: tuple[str, ...]) -> list[float] | None:
    for name in names:
        if name in sums:
            return sums[name]
    return None


# The core takes counts as u64: a larger (or negative) one is not a reading, it is garbage.
_MAX_COUNT = 2**64 - 1


def _in_range(count: int) -> int | None:
    return count if 0 <= count <= _MAX_COUNT else None


def _total(sums: dict[str, list[float]], names: tuple[str, ...]) -> float | None:
    values = _first(sums, names)
    if not values:
        return None
    try:
        return math.fsum(values)
    except OverflowError:  # finite samples whose sum is not: no usable total
        return None


def _count(sums: dict[str, list[float]], names: tuple[str, ...]) -> int | None:
    total = _total(sums, names)
    return None if total is None or total > _MAX_COUNT else int(round(total))


def _int_label(value: str | None) -> int | None:
    try:
        return _in_range(int(float(value))) if value else None
    except (ValueError, OverflowError):
        return None


def _wanted_lines(text: str) -> Iterator[str]:
    """The sample lines of the wanted families, found with str.find: a real page is ~50 kB of which
    a dozen lines matter, and walking every line in Python costs several times more."""
    text = "\n" + text
    for name in _WANTED:
        needle = "\n" + name
        pos = text.find(needle)
        while pos >= 0:
            after = pos + len(needle)
            if after < len(text) and text[after] in "{ \t":
                end = text.find("\n", after)
                yield text[pos + 1:end if end >= 0 else len(text)].strip()
            pos = text.find(needle, after)


def parse_metrics(text: str) -> BackendMetrics:
    samples: dict[str, list[float]] = {}
    blocks: list[int] = []
    block_size: int | None = None
    for line in _wanted_lines(text):
        parsed = _split_sample(line)
        if parsed is None or parsed[0] not in _WANTED:
            continue
        name, labels, value_text = parsed
        if name == CACHE_CONFIG:
            # Two labels out of a dozen or more: look them up rather than parse them all.
            gpu_blocks = _int_label(_label(labels, _NUM_GPU_BLOCKS))
            if gpu_blocks is not None:
                blocks.append(gpu_blocks)
            block_size = block_size or _int_label(_label(labels, _BLOCK_SIZE))
            continue
        try:
            value = float(value_text)
        except ValueError:
            continue
        # Every family read here counts something: a negative sample is an exporter bug, not load.
        if math.isfinite(value) and value >= 0:
            samples.setdefault(name, []).append(value)
    if not samples and not blocks:
        raise MetricsParseError("no vLLM metrics on the page")
    kv, kv_total = _first(samples, KV_USAGE), _total(samples, KV_USAGE)
    return BackendMetrics(
        running=_count(samples, RUNNING),
        waiting=_count(samples, WAITING),
        kv_usage=min(1.0, kv_total / len(kv)) if kv and kv_total is not None else None,
        prefix_queries=_total(samples, PREFIX_QUERIES),
        prefix_hits=_total(samples, PREFIX_HITS),
        prompt_tokens=_total(samples, PROMPT_TOKENS),
        generation_tokens=_total(samples, GENERATION_TOKENS),
        num_gpu_blocks=_in_range(sum(blocks)) if blocks else None,
        block_size=block_size,
    )


def counters_reset(previous: BackendMetrics | None, current: BackendMetrics) -> bool:
    """True when a monotonic counter went backwards: the server restarted and its prefix cache is empty."""
    if previous is None:
        return False
    for before, now in zip(previous.counters(), current.counters()):
        if before is not None and now is not None and now < before:
            return True
    return False


__all__ = ["BackendMetrics", "MetricsParseError", "counters_reset", "parse_metrics"]
