"""Token-exact block keys: read each configured model directory's tokenizer files and hand their
contents to the routing core (which does no file I/O). Configured as `tokenizer: {model: dir}`
(--tokenizer MODEL=DIR, KVROUTE_TOKENIZER); the model name is what requests carry, so a LoRA
adapter is listed under its own name with its base model's directory.

Files, found as transformers finds them: tokenizer.json (required), tokenizer_config.json
(special tokens, and `chat_template` unless chat_template.jinja is present, which wins).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from kvroute._native import InvalidConfig, Router, Tokenizer


class TokenizerDirError(ValueError):
    """A model directory that cannot be used: missing or unreadable files, or files the core refuses."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerDirError(f"{path}: cannot read: {exc}") from None


def load_dir(directory: str) -> Tokenizer:
    """The core's tokenizer for one model directory (or a tokenizer.json path inside one)."""
    path = Path(directory)
    root = path.parent if path.name == "tokenizer.json" else path
    if not root.is_dir():
        raise TokenizerDirError(f"{directory}: not a directory")
    tokenizer_json = _read(root / "tokenizer.json")
    if tokenizer_json is None:
        raise TokenizerDirError(f"{directory}: no tokenizer.json (only fast HF tokenizers are supported)")
    config = _read(root / "tokenizer_config.json")
    if config is not None:
        try:
            json.loads(config)
        except ValueError as exc:
            raise TokenizerDirError(f"{root / 'tokenizer_config.json'}: not JSON: {exc}") from None
    template = _read(root / "chat_template.jinja")
    try:
        return Tokenizer(tokenizer_json, config, template)
    except InvalidConfig as exc:
        raise TokenizerDirError(f"{directory}: {exc}") from None


def load_all(dirs: Mapping[str, str]) -> dict[str, Tokenizer]:
    """Loads each directory once, however many model names share it."""
    by_dir: dict[str, Tokenizer] = {}
    for directory in dirs.values():
        if directory not in by_dir:
            by_dir[directory] = load_dir(directory)
    return {model: by_dir[directory] for model, directory in dirs.items()}


def apply(router: Router, dirs: Mapping[str, str]) -> dict[str, Tokenizer]:
    """Gives `router` a tokenizer for every configured model; returns them by model name."""
    loaded = load_all(dirs)
    for model, tok in loaded.items():
        router.set_tokenizer(model, tok)
    return loaded


__all__ = ["TokenizerDirError", "apply", "load_all", "load_dir"]
