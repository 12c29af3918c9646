"""Kubernetes label selectors, as the API server reads `?labelSelector=` (for the fake API server).

Equality-based (`k=v`, `k==v`, `k!=v`), set-based (`k in (a,b)`, `k notin (a,b)`) and existence
(`k`, `!k`); requirements are joined by commas and all must hold. An empty selector matches all.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

Labels = Mapping[str, str]
Requirement = Callable[[Labels], bool]

_SET = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQUALITY = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)$")
_EXISTS = re.compile(r"^(!?)([\w./-]+)$")


class SelectorError(ValueError):
    pass


def _split(selector: str) -> list[str]:
    """Commas separate requirements, except inside a set's parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(selector):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return [part.strip() for part in parts if part.strip()]


def _requirement(text: str) -> Requirement:
    if match := _SET.match(text):
        key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQUALITY.match(text):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(text):
        negated, key = match.group(1) == "!", match.group(2)
        return lambda labels: (key in labels) != negated
    raise SelectorError(f"unable to parse requirement: {text!r}")


def parse_selector(selector: str) -> Requirement:
    """A predicate over an object's labels; SelectorError for what the API server would answer 400 to."""
    requirements = [_requirement(part) for part in _split(selector)]
    return lambda labels: all(requirement(labels) for requirement in requirements)


__all__ = ["SelectorError", "parse_selector"]
