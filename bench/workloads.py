"""Benchmark workloads: seeded, deterministic lists of requests (and arrival times where they have them).

Text is made of words of one to four lowercase letters, each after a space. The simulator's stand-in
tokenizer reads every such word as exactly one token, so "a 1,000-token system prompt" is exact on
`kvroute sim` (a short header aside) and close enough (about 2 tokens a word) on a real BPE tokenizer.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvroute.loadgen import RequestSpec

# The project's root is two levels up; shared data is read in place, never copied into the project.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
MOONCAKE_TRACE = PROJECT_ROOT.parent / "shared" / "workloads" / "mooncake_synthetic_trace.jsonl"
TRACE_BLOCK_TOKENS = 512


@dataclass
class Workload:
    name: str
    requests: list[RequestSpec]
    # Arrival offsets in the fleet's seconds, when the workload has its own (a trace); else None.
    arrivals: list[float] | None = None
    # Every parameter that shaped it, recorded with the results.
    params: dict[str, Any] = field(default_factory=dict)


def word_list(rng: random.Random, count: int) -> list[str]:
    """`count` words, each one token of the simulator's tokenizer."""
    return [" " + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 4))) for _ in range(count)]


def words(rng: random.Random, count: int) -> str:
    return "".join(word_list(rng, count))


def _chat(model: str, messages: list[dict[str, str]], max_tokens: int, tag: str) -> RequestSpec:
    # ignore_eos makes vLLM (and the simulator) produce exactly max_tokens, so every contender
    # generates the same amount of work.
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0.0}
    return RequestSpec("chat", body, tag=tag)


def blog(model: str, requests: int, *, seed: int = 0, system_prompts: int = 8, system_tokens: int = 1000,
         question_tokens: tuple[int, int] = (16, 48), output_tokens: int = 64,
         hot_share: float | None = None, name: str = "blog", question_seed: int | None = None) -> Workload:
    """The experiment kvroute descends from: a few long shared system prompts, short user questions.

    Each request picks one of the system prompts uniformly at random; questions are all different.
    `question_seed` draws the picks and questions from a stream of their own: the same system prompts
    with other questions (a warm-up pass that fills the caches without answering the measured ones).
    `hot_share` makes it the hot-spot scenario: system prompt 0 takes that share of the requests,
    the others split the rest evenly (affinity alone would pile the hot one onto one backend).
    """
    if hot_share is not None and not (0.0 <= hot_share <= 1.0 and system_prompts >= 2):
        raise ValueError(f"hot_share {hot_share} needs 0..1 and at least two system prompts")
    rng = random.Random(seed)
    systems = [f"You are assistant {i}." + words(rng, system_tokens - 4) for i in range(system_prompts)]
    if question_seed is not None:
        rng = random.Random(f"{seed}/{question_seed}")
    specs = []
    for _ in range(requests):
        if hot_share is None:
            which = rng.randrange(system_prompts)
        else:
            which = 0 if rng.random() < hot_share else 1 + rng.randrange(system_prompts - 1)
        question = words(rng, rng.randint(*question_tokens)).strip() + "?"
        specs.append(_chat(model, [{"role": "system", "content": systems[which]},
                                   {"role": "user", "content": question}], output_tokens, f"sys{which}"))
    return Workload(name, specs, params=dict(requests=requests, seed=seed, system_prompts=system_prompts,
                                               system_tokens=system_tokens, question_tokens=list(question_tokens),
                                               output_tokens=output_tokens, hot_share=hot_share))


def hotspot(model: str, requests: int, *, hot_share: float = 0.9, **blog_params: Any) -> Workload:
    """The hot-spot scenario: the blog experiment with one system prompt taking `hot_share`."""
    return blog(model, requests, hot_share=hot_share, name="hotspot", **blog_params)


def burst(model: str, requests: int = 200, *, seed: int = 0, prefix_tokens: int = 8192,
          question_tokens: tuple[int, int] = (16, 48), output_tokens: int = 64) -> Workload:
    """The burst scenario: `requests` chats that all arrive at once, sharing one long system prompt
    no backend has seen. A router that scores each on its own sees an empty cache everywhere and
    spreads them, so every backend prefills the prefix; they should land together (or on as few
    backends as the load needs) and reuse it. Open loop: every arrival offset is 0."""
    rng = random.Random(seed)
    system = f"You are the burst assistant {seed}." + words(rng, prefix_tokens - 6)
    specs = [_chat(model, [{"role": "system", "content": system},
                           {"role": "user", "content": words(rng, rng.randint(*question_tokens)).strip() + "?"}],
                   output_tokens, "burst") for _ in range(requests)]
    return Workload("burst", specs, [0.0] * requests,
                    params=dict(requests=requests, seed=seed, prefix_tokens=prefix_tokens,
                                question_tokens=list(question_tokens), output_tokens=output_tokens))


def gsp(model: str, *, seed: int = 0, groups: int = 64, prompts_per_group: int = 16, system_tokens: int = 2048,
        question_tokens: int = 128, output_tokens: int = 256, scale: float = 1.0,
        limit: int | None = None) -> Workload:
    """SGLang's generated-shared-prefix shape: groups of prompts sharing one long system prompt.

    `scale` shrinks the group count and every length by the same factor (0.25: 16 groups, 512-token
    system prompts, 32-token questions, 64 output tokens); requests are shuffled as SGLang's
    bench_serving does, so a group's prompts arrive spread over the run. `limit` keeps the first N.
    """
    rng = random.Random(seed)
    n_groups = max(1, round(groups * scale))
    sys_len = max(8, round(system_tokens * scale))
    q_len = max(4, round(question_tokens * scale))
    out_len = max(1, round(output_tokens * scale))
    specs = []
    for g in range(n_groups):
        system = f"System prompt of group {g}." + words(rng, sys_len - 6)
        for _ in range(prompts_per_group):
            specs.append(_chat(model, [{"role": "system", "content": system},
                                       {"role": "user", "content": words(rng, q_len).strip()}], out_len, f"g{g}"))
    rng.shuffle(specs)
    if limit is not None:
        specs = specs[:limit]
    return Workload("gsp", specs, params=dict(seed=seed, groups=n_groups, prompts_per_group=prompts_per_group,
                                              system_tokens=sys_len, question_tokens=q_len,
                                              output_tokens=out_len, scale=scale, requests=len(specs)))


def multiturn(model: str, *, seed: int = 0, conversations: int = 32, turns: int = 6, system_tokens: int = 300,
              user_tokens: tuple[int, int] = (40, 120), output_tokens: int = 64) -> Workload:
    """Conversations whose every turn resends the whole history plus a new user message.

    The assistant's earlier replies in the history are synthetic text of `output_tokens` words (the
    model's real answer is not fed back, so that the workload is the same for every contender): what a
    backend can reuse is the previous turn's prompt. Requests are ordered turn by turn across all
    conversations, so with concurrency at most `conversations` a turn is sent after the previous turn
    of its conversation was answered; within a turn the conversations come in a seeded random order
    (a fixed order would hand round robin perfect affinity whenever the conversation count is a
    multiple of the backend count).
    """
    rng = random.Random(seed)
    histories: list[list[dict[str, str]]] = []
    for c in range(conversations):
        histories.append([{"role": "system", "content": f"Conversation {c}." + words(rng, system_tokens - 2)}])
    specs = []
    order = list(range(conversations))
    for turn in range(turns):
        rng.shuffle(order)
        for c in order:
            history = histories[c]
            history.append({"role": "user", "content": words(rng, rng.randint(*user_tokens)).strip()})
            specs.append(_chat(model, list(history), output_tokens, f"c{c}t{turn}"))
            history.append({"role": "assistant", "content": words(rng, output_tokens).strip()})
    return Workload("multiturn", specs, params=dict(seed=seed, conversations=conversations, turns=turns,
                                                    system_tokens=system_tokens, user_tokens=list(user_tokens),
                                                    output_tokens=output_tokens, requests=len(specs)))


def _block_words(hash_id: int, tokens: int, seed: int) -> list[str]:
    # Same id, same text, whatever request it appears in; the seed changes every block at once.
    return word_list(random.Random(hash_id * 1_000_003 + seed), tokens)


def trace(model: str, *, path: Path = MOONCAKE_TRACE, seed: int = 0, limit: int | None = None,
          start: int = 0, length_scale: float = 1.0, output_scale: float | None = None,
          speedup: float = 1.0, max_prompt_tokens: int | None = None, name: str = "trace") -> Workload:
    """Replay of a Mooncake-format trace through /v1/completions (the prompt is sent as is).

    Every hash id becomes a deterministic block of text; `length_scale` shrinks the blocks (0.0625:
    32-token blocks) so that prompt sharing keeps its structure while lengths fit a small fleet;
    `output_scale` (default: `length_scale`) does the same for output lengths. Timestamps (ms) become
    seconds divided by `speedup`, counted from the first replayed request. `max_prompt_tokens` cuts
    longer prompts (the Mooncake trace holds prompts up to 191k tokens).
    """
    rows: list[dict[str, Any]] = []
    with open(path) as handle:
        for number, line in enumerate(handle):
            if number < start:
                continue
            if limit is not None and len(rows) >= limit:
                break
            rows.append(json.loads(line))
    if not rows:
        raise ValueError(f"trace {path}: no request at or after number {start}")
    out_scale = length_scale if output_scale is None else output_scale
    block = max(1, round(TRACE_BLOCK_TOKENS * length_scale))
    specs, arrivals = [], []
    t0 = rows[0]["timestamp"] if rows else 0
    # The best any routing can do: a prompt block hits when an earlier replayed request held it
    # (ids are chained, so a seen id means the whole prefix up to it was seen), with one infinite cache.
    seen: set[int] = set()
    hit_blocks = all_blocks = 0
    for row in rows:
        length = max(1, round(row["input_length"] * length_scale))
        if max_prompt_tokens is not None:
            length = min(length, max_prompt_tokens)
        pieces, remaining = [], length
        for hash_id in row["hash_ids"]:
            if remaining <= 0:
                break
            all_blocks += 1
            hit_blocks += hash_id in seen
            seen.add(hash_id)
            take = min(block, remaining)
            # Cutting a block keeps its leading words, so a cut block still shares its start.
            pieces.extend(_block_words(hash_id, block, seed)[:take])
            remaining -= take
        body = {"model": model, "prompt": "".join(pieces), "max_tokens": max(1, round(row["output_length"] * out_scale)),
                "ignore_eos": True, "temperature": 0.0}
        specs.append(RequestSpec("completions", body, tag=f"h{row['hash_ids'][0] if row['hash_ids'] else -1}"))
        arrivals.append((row["timestamp"] - t0) / 1000.0 / speedup)
    return Workload(name, specs, arrivals, params=dict(path=str(path), seed=seed, start=start,
                                                          requests=len(specs), length_scale=length_scale,
                                                          block_tokens=block, output_scale=out_scale,
                                                          speedup=speedup, max_prompt_tokens=max_prompt_tokens,
                                                          ideal_hit_rate=round(hit_blocks / max(all_blocks, 1), 3),
                                                          span_s=arrivals[-1] if arrivals else 0.0))
