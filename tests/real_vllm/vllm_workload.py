"""Request sequences shared by the prefix-affinity and simulator-fidelity checks.

Texts are made from a seeded word list, so each tag gives its own prefix and the same tag gives the
same text in every run. The tiny model's byte-level BPE yields roughly two characters per token.
"""

from __future__ import annotations

import random

_WORDS = (
    "gateway route cache prefix block token server fleet request answer model prompt stream "
    "latency queue batch decode prefill weight layer head vector memory policy cost score"
).split()


def text(tag: str, words: int) -> str:
    rng = random.Random(tag)
    return f"[{tag}] " + " ".join(rng.choice(_WORDS) for _ in range(words))


def shared_prefix_sequence(tag: str, prefixes: int = 3, repeats: int = 4, words: int = 220) -> list[str]:
    """`prefixes` long documents, each asked about `repeats` times, interleaved (p0 p1 p2 p0 ...).

    An odd number of prefixes makes round robin over two servers alternate each document between
    them, so it pays a cold start per document per server; an affinity policy pays one per document.
    """
    docs = [text(f"{tag}-doc{p}", words) for p in range(prefixes)]
    return [
        f"{docs[p]}\nQuestion {r}: {text(f'{tag}-q{r}-{p}', 6)}?"
        for r in range(repeats)
        for p in range(prefixes)
    ]


def conversation_sequence(tag: str, turns: int = 5, words_per_turn: int = 90) -> list[str]:
    """One growing conversation: each prompt is the previous one plus a new turn (multi-turn chat),
    so hits grow with the history, cut at block boundaries that differ from turn boundaries."""
    prompts, history = [], text(f"{tag}-system", 40)
    for turn in range(turns):
        history += "\n" + text(f"{tag}-turn{turn}", words_per_turn)
        prompts.append(history)
    return prompts


def chat_conversation(tag: str, turns: int = 5, words_per_turn: int = 90) -> list[list[dict[str, str]]]:
    """One growing chat: request i is the system prompt and turns 0..i, each turn a user message and,
    before the next one, a fixed assistant reply (the client's copy of the answer, as chat clients
    resend it), so every request extends the previous one through the model's chat template."""
    history = [{"role": "system", "content": text(f"{tag}-system", 40)}]
    requests = []
    for turn in range(turns):
        history.append({"role": "user", "content": text(f"{tag}-user{turn}", words_per_turn)})
        requests.append(list(history))
        history.append({"role": "assistant", "content": text(f"{tag}-reply{turn}", words_per_turn // 3)})
    return requests
