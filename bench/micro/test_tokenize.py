"""Route latency with token-exact keys: Router.route on chat bodies of about 1k, 8k and 32k tokens
for a model with a tokenizer (a byte-level BPE trained here, ChatML template), as a first turn
(nothing cached: render + tokenize everything) and as a next turn (the history is in the prefix
cache: only the new messages are tokenized). Run with `make bench-micro`; nothing is asserted."""

from __future__ import annotations

import itertools
import json

import pytest
from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, pre_tokenizers, trainers

import kvroute
from kvroute import model_tokenizers

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("the router sends each request to the server that holds its prefix in cache while load stays "
         "balanced across replicas and queues remain short under bursts of long prompts").split()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> kvroute.Router:
    d = tmp_path_factory.mktemp("bench-tok")
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tok.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    r = kvroute.Router("cost", block_tokens=16)
    r.upsert_backend("b0", models=["m"], healthy=True)
    model_tokenizers.apply(r, {"m": str(d)})
    return r


def history(tokens: int, nonce: int) -> list[dict[str, str]]:
    # Varied words with digits: roughly one token per 2.5 bytes with this vocabulary.
    text = " ".join(f"{WORDS[i % len(WORDS)]}{i % 97}" for i in range(tokens // 3))
    half = len(text) // 2
    return [{"role": "system", "content": f"run {nonce}. " + text[:half]},
            {"role": "user", "content": text[half:]}]


def _measure(benchmark, router: kvroute.Router, setup, tokens: int) -> None:
    """Route and release each body `setup` makes; record the prompt's size and key space."""

    def once(body: bytes) -> None:
        d = router.route(body)
        router.release(d.ticket, True)

    benchmark.pedantic(once, setup=setup, rounds=20 if tokens > 8192 else 50)
    d = router.route(setup()[0][0])
    benchmark.extra_info.update(prompt_tokens=d.prompt_tokens, key_space=d.key_space)


@pytest.mark.parametrize("tokens", [1024, 8192, 32768])
def test_route_first_turn(benchmark, router: kvroute.Router, tokens: int) -> None:
    nonces = itertools.count()

    def setup():
        return (json.dumps({"model": "m", "messages": history(tokens, next(nonces))}).encode(),), {}

    _measure(benchmark, router, setup, tokens)


@pytest.mark.parametrize("tokens", [1024, 8192, 32768])
def test_route_next_turn_cache_hit(benchmark, router: kvroute.Router, tokens: int) -> None:
    past = history(tokens, -1) + [{"role": "assistant", "content": "ok, routed."}]
    router.route(json.dumps({"model": "m", "messages": past[:2]}).encode())
    nonces = itertools.count()

    def setup():
        msgs = past + [{"role": "user", "content": f"and the next question, number {next(nonces)}?"}]
        # The turn before this one, as the client sent it: its history is what gets cached.
        return (json.dumps({"model": "m", "messages": msgs}).encode(),), {}

    _measure(benchmark, router, setup, tokens)
