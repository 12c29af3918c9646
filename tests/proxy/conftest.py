"""Fixtures for the data-plane tests; the helpers they use live in helpers.py."""

from __future__ import annotations

import ssl
from typing import AsyncIterator, Awaitable, Callable

import pytest

from .helpers import Script, ScriptedBackend, answer_ok


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedBackend]]]:
    started: list[ScriptedBackend] = []

    async def make(script: Script = answer_ok, models: list[str] | None = None,
                   tls: ssl.SSLContext | None = None) -> ScriptedBackend:
        backend = ScriptedBackend(script, models or ["m"], tls=tls)
        started.append(await backend.start())
        return backend

    yield make
    for backend in started:
        await backend.stop()
