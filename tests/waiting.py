"""The suite's one way to wait for a state a server reaches in its own time (a poll, a restart, a
drain): check every 10 ms, give up after a bound. The bound is a hang guard, not a timing assertion."""

from __future__ import annotations

import asyncio
from typing import Callable


async def eventually(check: Callable[[], bool], what: str = "condition", timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() >= deadline:
            raise AssertionError(f"never happened within {timeout:g} s: {what}")
        await asyncio.sleep(0.01)
