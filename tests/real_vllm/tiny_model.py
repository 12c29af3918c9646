"""The real_vllm tier's fixture model: a tiny random-weight Llama vLLM's CPU build can serve.

No weights can be downloaded here, so the model is built at test time. Two halves:

* ``build(out_dir)`` needs torch and transformers, so it runs under the vLLM environment's
  python (``python tiny_model.py OUT_DIR``); the project ``.venv`` has no torch.
* ``ensure_model(vllm_python)`` runs from anywhere: it returns the cached model directory,
  building it first when missing. The cache key is a hash of this file, so editing the recipe
  builds a new model and never serves a stale one.

Prompts sent to this model carry no special tokens (no BOS is added), so the token ids vLLM sees
for a completion prompt are exactly ``tokenizers.Tokenizer.from_file(tokenizer.json).encode``:
the simulator can be fed the same tokenizer and land on the same block hashes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SERVED_NAME = "tiny-llama"
CACHE_ROOT = Path(os.environ.get("KVROUTE_CACHE", Path.home() / ".cache" / "kvroute")) / "models"
_COMPLETE = ".complete"

# A few lines of ordinary text: enough for a byte-level BPE to learn some merges, so prompts
# tokenize into a realistic mix of whole words and byte pieces.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A gateway routes each request to the server that already holds its prefix in cache.",
    "Large language models answer questions, write code and summarise long documents.",
    "The weather today is sunny with a light breeze from the west and a few clouds.",
    "Please explain how the key value cache speeds up the decoding of a transformer.",
    "System: you are a helpful assistant. User: hello there! Assistant: hi, how can I help?",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 10 100 1000 appear in many prompts and answers.",
    "Routing, batching, scheduling, caching and streaming are the jobs of a serving stack.",
]

# Roles as plain text lines: the template needs no extra special tokens, which keeps chat and
# completion tokenization the same byte-level BPE. Tools and tool calls are rendered the way real
# templates do (Qwen2.5, Llama 3.1: each tool spec and each call's arguments through `tojson`), so
# the KV-event tier checks kvroute's rendering of them against vLLM's; a chat without tools renders
# exactly as the plain "role: content" lines.
_CHAT_TEMPLATE = (
    "{% if tools %}{% for tool in tools %}tool spec: {{ tool | tojson }}\n{% endfor %}{% endif %}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message.tool_calls is defined and message.tool_calls %}{% for call in message.tool_calls %}"
    " call {{ call.function.name }} {{ call.function.arguments | tojson }}"
    "{% endfor %}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def recipe_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def model_dir() -> Path:
    return CACHE_ROOT / f"tiny-llama-{recipe_hash()}"


def build(out_dir: Path) -> None:
    """Writes tokenizer and model into ``out_dir`` (vLLM env only: imports torch)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        # Every byte is in the alphabet, so any prompt tokenizes (no unknown tokens).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        model_max_length=8192,
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),  # exactly the tokenizer: random sampling never yields an unknown id
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 128 / 2 = 64: the CPU attention backend rejects 16
        num_key_value_heads=1,
        max_position_embeddings=8192,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)


def ensure_model(vllm_python: str | os.PathLike[str]) -> Path:
    """Returns the cached model directory, building it with ``vllm_python`` when missing."""
    final = model_dir()
    if (final / _COMPLETE).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [os.fspath(vllm_python), __file__, os.fspath(tmp)],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        timeout=600,
    )
    (tmp / _COMPLETE).write_text(recipe_hash() + "\n")
    try:
        # Built beside the final place and renamed, so a half-written model is never served.
        tmp.rename(final)
    except OSError:
        # Another run finished first (rename onto a non-empty directory fails): keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / _COMPLETE).exists():
            raise
    return final


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tiny_model.py OUT_DIR   (under the vLLM environment's python)")
    build(Path(sys.argv[1]))
