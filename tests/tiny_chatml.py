"""A tiny ChatML model directory (tokenizer.json, tokenizer_config.json with its chat template),
built at test time: a byte-level BPE trained on a few lines, every turn starting with a special
token as in Qwen's templates. The router's `--tokenizer` and the simulator's `--tokenizer` both
read it, so both tokenize a chat the way vLLM would."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

# ChatML with tools and a kwarg, the shape of Qwen's templates (every turn starts with a special token).
TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
CORPUS = [
    "You are a helpful assistant. Answer briefly and clearly.",
    "What is the capital of France? Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog, twice: 1 2 3 4 5.",
    '{"name": "weather", "description": "Get the weather", "parameters": {"type": "object"}}',
]


def build(d: Path) -> Path:
    """Writes the model files into directory d; returns d."""
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|bos|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    tok.save(str(d / "tokenizer.json"))
    config = {"bos_token": {"content": "<|bos|>", "lstrip": False, "rstrip": False, "__type": "AddedToken"},
              "eos_token": "<|im_end|>", "chat_template": TEMPLATE}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d
