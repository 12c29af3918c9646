"""The one background loop of the package: do a round, survive its failure, sleep, again.

The poller, discovery by file and DNS, the shared admin state, the workers' snapshot writer and the
proxy's idle sweep each run rounds like this until cancelled. One bad round (a bug, a full disk, a
document that does not apply) is logged with its traceback and the next round runs as usual: a loop
that died would leave the router quietly running on what it last saw.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Awaitable, Callable, NoReturn


async def every(interval: float, step: Callable[[], Awaitable[object] | object], log: logging.Logger,
                what: str, *, sleep_first: bool = False) -> NoReturn:
    """Run `step` (plain or async) every `interval` seconds until cancelled; `what` names it in the
    log line of a failed round. `sleep_first`: the first round comes after one interval."""
    if sleep_first:
        await asyncio.sleep(interval)
    while True:
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(interval)


__all__ = ["every"]
