"""How a chat request becomes prompt token ids: the model's own Jinja chat template, or a built-in one.

vLLM 0.32 renders a chat through HF transformers' `apply_chat_template(tokenize=True)`
(vllm/renderers/hf.py, safe_apply_chat_template), and transformers encodes the rendered text with
`add_special_tokens=False`: a BOS is in the prompt only where the template writes `{{ bos_token }}`,
never added on top, and the request's `add_special_tokens` does not reach that path (the template
call already returned token ids). JinjaChat does the same with the same Jinja settings.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .tokenizer import BUILTIN_TEMPLATES, TemplateError, Tokenizer, chat_messages, render_chat, tokenizer_dir

# transformers hands a template its special_tokens_map: these names, as plain strings.
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatPrompt(Protocol):
    source: str  # which template: a built-in name, a file, or "inline"

    def prompt_ids(self, messages: Any) -> list[int]: ...


class BuiltinChat:
    """One of the simulator's own templates (see tokenizer.render_chat), encoded turn by turn."""

    def __init__(self, name: str, tokenizer: Tokenizer) -> None:
        self.source = name
        self._tok = tokenizer

    def prompt_ids(self, messages: Any) -> list[int]:
        return self._tok.encode_segments(render_chat(self.source, messages))


class JinjaChat:
    """A model's Jinja chat template, rendered as transformers renders it."""

    def __init__(self, template: str, source: str, special_tokens: dict[str, str], tokenizer: Tokenizer) -> None:
        self.source = source
        self._tok = tokenizer
        self._special = special_tokens
        self._compiled: jinja2.Template | None = None
        self._syntax_error = ""
        try:
            self._compiled = _environment().from_string(template)
        except jinja2.TemplateSyntaxError as e:
            # vLLM starts with a broken template and fails every chat request with a 400: so do we.
            self._syntax_error = f"{e.message} (line {e.lineno})"

    def render(self, messages: Any) -> str:
        if self._compiled is None:
            raise TemplateError(self._syntax_error, param=None)
        msgs = chat_messages(messages)
        try:
            return self._compiled.render(messages=msgs, tools=None, documents=None, add_generation_prompt=True,
                                         **self._special)
        except Exception as e:
            # vLLM answers 400 to anything a template raises (raise_exception, a type error in its logic).
            raise TemplateError(str(e), param=None) from e

    def prompt_ids(self, messages: Any) -> list[int]:
        return self._tok.encode(self.render(messages))


def load_chat(tokenizer: Tokenizer, tokenizer_path: str | None, template: str,
              model_first: bool = True) -> ChatPrompt:
    """The chat template to serve: with `model_first`, the tokenizer directory's own template when
    it has one; otherwise `template` (a built-in name, a file or an inline template). `model_first`
    is false when the user named the template (--chat-template), which then beats the model's."""
    config = _tokenizer_config(tokenizer_path)
    special = {k: v for k, v in ((k, _token_text(config.get(k))) for k in _SPECIAL_TOKENS) if v is not None}
    if model_first and tokenizer_path is not None:
        found = model_template(tokenizer_path, config)
        if found is not None:
            return JinjaChat(*found, special, tokenizer)
    if template in BUILTIN_TEMPLATES:
        return BuiltinChat(template, tokenizer)
    return JinjaChat(*read_template(template), special, tokenizer)


def model_template(tokenizer_path: str, config: dict[str, Any]) -> tuple[str, str] | None:
    """(template, where it came from) beside a tokenizer, found the way transformers finds it:
    chat_template.jinja first, then tokenizer_config.json's `chat_template` (a string, or a list of
    {name, template} from which "default")."""
    jinja_file = tokenizer_dir(tokenizer_path) / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), str(jinja_file)
    template = config.get("chat_template")
    where = str(tokenizer_dir(tokenizer_path) / "tokenizer_config.json")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        default = named.get("default")
        if not isinstance(default, str):
            raise ValueError(f"{where}: chat_template lists {sorted(map(str, named))}, none named 'default'")
        return default, f"{where} (default)"
    return (template, where) if isinstance(template, str) else None


def read_template(spec: str) -> tuple[str, str]:
    """A --chat-template value read as vLLM reads it: a file, else the template itself when it
    has Jinja's characters in it."""
    try:
        return Path(spec).read_text(encoding="utf-8"), spec
    except OSError as e:
        if any(c in spec for c in "{}\n"):
            return spec, "inline"
        raise ValueError(f"chat template {spec!r} is neither built-in ({', '.join(BUILTIN_TEMPLATES)}) "
                         f"nor a readable file: {e.strerror}") from None


def _tokenizer_config(tokenizer_path: str | None) -> dict[str, Any]:
    if tokenizer_path is None:
        return {}
    path = tokenizer_dir(tokenizer_path) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def _token_text(token: Any) -> str | None:
    # tokenizer_config.json writes a special token as its text or as a serialized AddedToken.
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


class _GenerationMarks(Extension):
    """HF templates may wrap assistant text in {% generation %}...{% endgeneration %} to build
    training masks; for inference the marks render their body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' tojson: Jinja's own escapes <, >, & and ', which would change the token count.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    # transformers' settings (utils/chat_template_utils.py): whitespace control changes the tokens.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[_GenerationMarks, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env
