"""Tokenization and chat templates for the simulator.

The default tokenizer needs no files: it cuts text into short pieces (3.5 to 4 bytes each, like
a BPE tokenizer on English) and hashes each piece to a stable id, so the same text always gives
the same ids and a shared text prefix gives a shared token prefix, which is all the prefix
cache needs. `--tokenizer PATH` loads a real `tokenizers` JSON so counts match a real model
(and chat_template.py then renders chats with that model's own template, if it has one).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any, Protocol

# Special markers of the chat templates are single tokens, as in the real vocabularies.
# Markers are never glued to a preceding space or newline, so text splits cleanly before them.
# Whitespace runs leave their last space to the next word (as GPT-2-style pre-tokenizers do), so
# "...\n" + " word" tokenizes as the two parts did: a conversation's next turn, which quotes
# the previous answer, re-tokenizes to the previous prompt's ids plus the generated ids.
_PIECE = re.compile(r"<\|[a-z_]+\|>|\s?[A-Za-z]{1,6}|\s?\d{1,3}|\s?(?!<\|)[^\sA-Za-z0-9]|\s+(?!\S)|\s")
_VOCAB = 151_643  # Qwen2.5's regular vocabulary size; ids look plausible
_SPECIAL_BASE = _VOCAB
_CACHE_LIMIT = 1 << 20

# Words the simulated model "generates": each is one piece of the default tokenizer (a space
# and at most three letters), so decoding then re-encoding an answer gives the same ids.
OUTPUT_WORDS = (
    " the of and to in is it on for as at by be we he she you all can not but one two"
    " new old big red sun sky sea day way man end run say see how why who now yes top"
    " far arc key map log set get put add sum max min row col bit hex"
).split(" ")[1:]
OUTPUT_WORDS = [" " + w for w in OUTPUT_WORDS]


class Tokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...

    def encode_segments(self, segments: list[str]) -> list[int]: ...

    def encode_prompt(self, text: str, template: str) -> list[int]: ...

    def decode_one(self, token_id: int) -> str: ...

    def output_ids(self) -> list[int]: ...


class HashTokenizer:
    """Deterministic stand-in tokenizer (~4 bytes a token)."""

    name = "sim-hash"

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._segments: dict[str, list[int]] = {}
        self._text: dict[int, str] = {}
        self._out = [self._id(w) for w in OUTPUT_WORDS]
        for w, i in zip(OUTPUT_WORDS, self._out):
            self._text[i] = w

    def _id(self, piece: str) -> int:
        i = self._ids.get(piece)
        if i is None:
            if piece.startswith("<|") and piece.endswith("|>"):
                i = _SPECIAL_BASE + zlib.crc32(piece.encode()) % 1000
            else:
                i = zlib.crc32(piece.encode()) % _VOCAB
            if len(self._ids) >= _CACHE_LIMIT:
                self._ids.clear()
            self._ids[piece] = i
        return i

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        out = []
        for piece in _PIECE.findall(text):
            i = ids.get(piece)
            out.append(i if i is not None else self._id(piece))
        return out

    def encode_prompt(self, text: str, template: str) -> list[int]:
        """A completions prompt, with what the model's tokenizer adds in front (Llama's BOS)."""
        return self.encode(completion_prefix(template) + text)

    def encode_segments(self, segments: list[str]) -> list[int]:
        """Encode a rendered chat turn by turn. Every turn starts with a special marker, where no
        piece can span, so this equals encoding the joined text; the turns (above all the long
        shared system prompts) are memoized, which keeps a 16-instance fleet on one core."""
        out: list[int] = []
        memo = self._segments
        for seg in segments:
            ids = memo.get(seg)
            if ids is None:
                ids = self.encode(seg)
                if len(memo) >= 4096:
                    memo.clear()
                memo[seg] = ids
            out += ids
        return out

    def decode_one(self, token_id: int) -> str:
        return self._text.get(token_id, "")

    def output_ids(self) -> list[int]:
        return list(self._out)


class HFTokenizer:
    """A `tokenizers` JSON file (e.g. a model's tokenizer.json), or the model directory holding it."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as _T

        self._tok = _T.from_file(str(Path(path) / "tokenizer.json") if Path(path).is_dir() else path)
        self.name = path
        self._out: list[int] = []
        for w in OUTPUT_WORDS:
            ids = self._tok.encode(w, add_special_tokens=False).ids
            if len(ids) == 1:
                self._out.append(ids[0])
        if not self._out:
            self._out = [i for i in range(min(self._tok.get_vocab_size(), 1000)) if self._tok.decode([i])][:64]
        self._text = {i: self._tok.decode([i]) for i in self._out}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str, template: str) -> list[int]:
        # vLLM tokenizes completions prompts with the tokenizer's own special tokens (BOS...).
        return self._tok.encode(text, add_special_tokens=True).ids

    def encode_segments(self, segments: list[str]) -> list[int]:
        # The real tokenizer sees the whole text, so counts match the model exactly.
        return self.encode("".join(segments))

    def decode_one(self, token_id: int) -> str:
        t = self._text.get(token_id)
        return t if t is not None else self._tok.decode([token_id])

    def output_ids(self) -> list[int]:
        return list(self._out)


def completion_prefix(template: str) -> str:
    """What vLLM's tokenizer adds in front of a raw completions prompt (Llama's BOS; Qwen none)."""
    return "<|begin_of_text|>" if template == "llama3" else ""


def tokenizer_dir(path: str) -> Path:
    """The model directory of a tokenizer, given the directory or its tokenizer.json."""
    p = Path(path)
    return p if p.is_dir() else p.parent


def load_tokenizer(path: str | None) -> Tokenizer:
    return HFTokenizer(path) if path else HashTokenizer()


class TemplateError(ValueError):
    """A chat the template cannot render: the client gets a 400 naming `param`."""

    def __init__(self, message: str, param: str | None = "messages") -> None:
        super().__init__(message)
        self.param = param


def _content_text(content: Any) -> str:
    # OpenAI allows a string or a list of parts; only text parts exist for a text model.
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise TemplateError("only text content parts are supported")
            parts.append(p["text"])
        return "\n".join(parts)
    raise TemplateError("message content must be a string or a list of text parts")


BUILTIN_TEMPLATES = ("chatml", "llama3")
_QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


# What vLLM keeps of an OpenAI message besides role and content, for templates that render tools.
_PASSED_KEYS = ("name", "tool_calls", "tool_call_id")


def _checked(messages: Any) -> list[Any]:
    if not isinstance(messages, list) or not messages:
        raise TemplateError("'messages' must be a non-empty list")
    return messages


def _turn(m: Any) -> tuple[str, str]:
    """One validated message as (role, content flattened to text)."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise TemplateError("each message must be an object with a string 'role'")
    if m["role"] not in ("system", "user", "assistant", "tool", "developer"):
        raise TemplateError(f"unknown role {m['role']!r}")
    return m["role"], _content_text(m.get("content"))


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Validated messages as a chat template sees them: content flattened to text (vLLM's
    "string" content format), role, and the tool fields a template may render."""
    out = []
    for m in _checked(messages):
        role, content = _turn(m)
        msg = {"role": role, "content": content}
        msg.update((k, m[k]) for k in _PASSED_KEYS if m.get(k) is not None)
        out.append(msg)
    return out


def apply_chat_template(template: str, messages: list[Any]) -> str:
    return "".join(render_chat(template, messages))


def render_chat(template: str, messages: list[Any]) -> list[str]:
    """Render messages the way the model's own template does (Qwen2.5's ChatML or Llama 3.1's),
    with the generation prompt. Every turn renders independently of later turns, so a conversation's next request starts with
    the previous request's prompt (minus its generation prompt) and shares its cached blocks.
    Returns the prompt as segments, one per turn, each starting with a special marker."""
    turns = [_turn(m) for m in _checked(messages)]
    if template == "llama3":
        out = ["<|begin_of_text|>"]
        system = ""
        if turns[0][0] == "system":
            system = turns.pop(0)[1]
        out.append(
            "<|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
            f"{system}<|eot_id|>"
        )
        for role, text in turns:
            role = "ipython" if role == "tool" else role
            out.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>")
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
        return out
    if template == "chatml":
        out = []
        if turns[0][0] != "system":
            out.append(f"<|im_start|>system\n{_QWEN_DEFAULT_SYSTEM}<|im_end|>\n")
        for role, text in turns:
            out.append(f"<|im_start|>{role}\n{text}<|im_end|>\n")
        out.append("<|im_start|>assistant\n")
        return out
    raise TemplateError(f"unknown chat template {template!r}")
