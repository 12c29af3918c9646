"""The model directory the simulated fleet and kvroute share for the exact cache view, built at run time.

`ensure()` returns a directory holding tokenizer.json and tokenizer_config.json (a ChatML chat
template with its special tokens), built once and cached under ~/.cache/kvroute. Both sides read it:
`kvroute sim --tokenizer DIR` (the Python `tokenizers` package) and `kvroute serve --tokenizer
MODEL=DIR` (the Rust `tokenizers` crate), so the router keys a prompt by the same token ids the
engine caches and its KV events carry.

The tokenizer is chosen so that the benchmarks' numbers stay those of the simulator's built-in one:
a WordLevel vocabulary holding every word of 1-4 lowercase letters (what bench/workloads.py writes,
one token each, as before), whitespace dropped, and anything else (capitals, digits, punctuation of
the workloads' headers) split into single characters, each its own token; characters outside ASCII
are the unknown token. Every piece of text thus maps to one deterministic list of ids, and distinct
texts of workload words to distinct lists.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import string
import tempfile
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|unk|>")
UNK = "<|unk|>"
# The shape of Qwen2.5's template without its default system prompt: every turn starts with a
# special token, so kvroute's per-message token cache applies.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MAX_WORD = 4
PIECE_PATTERN = "[a-z]{1,%d}|[^a-z]" % MAX_WORD
# Bump when the files' content changes: a cached directory of an older build is not reused.
VERSION = 1
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvroute"


def vocabulary() -> dict[str, int]:
    """Specials first, then every printable ASCII character but whitespace and lowercase letters,
    then the lowercase words by length (ids are stable across builds)."""
    singles = [c for c in string.printable if not c.isspace() and c not in string.ascii_lowercase]
    tokens: list[str] = [*SPECIAL_TOKENS, *singles]
    for n in range(1, MAX_WORD + 1):
        tokens += ("".join(p) for p in itertools.product(string.ascii_lowercase, repeat=n))
    return {t: i for i, t in enumerate(tokens)}


def build(directory: Path) -> Path:
    """Writes the model files into `directory` (created); returns it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(vocabulary(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated"),
    ])
    # Joins tokens with a space: decoded text reads as words (whitespace is not kept by encoding).
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": UNK,
              "model_max_length": 131072, "chat_template": CHAT_TEMPLATE}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return directory


def _key() -> str:
    text = json.dumps([VERSION, SPECIAL_TOKENS, CHAT_TEMPLATE, PIECE_PATTERN])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure(cache: Path | None = None) -> Path:
    """The shared model directory, built on first use (atomically: a half-built one is never seen)."""
    root = cache if cache is not None else CACHE
    target = root / f"sim-tokenizer-{_key()}"
    if (target / "tokenizer_config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".sim-tokenizer-", dir=root))
    build(scratch)
    try:
        os.rename(scratch, target)
    except OSError:  # another run built it first
        for f in scratch.iterdir():
            f.unlink()
        scratch.rmdir()
    return target


if __name__ == "__main__":
    print(ensure())
