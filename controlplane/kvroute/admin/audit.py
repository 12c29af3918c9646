"""One log line for every change made through the admin API: who asked, from where, what changed,
before and after; and one for every request refused for its token.

"Who" is what the request can show: the peer address, whether it carried the admin token, and the
name it gives in `x-kvroute-actor` (self-declared, so only as good as the token that came with it).
In JSON logs the same facts are fields of the record (`audit_*`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Request

log = logging.getLogger("kvroute.audit")
ACTOR_HEADER = "x-kvroute-actor"
_ACTOR_MAX = 64


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else "unknown"


def _actor(request: Request, token_required: bool) -> str:
    given = request.headers.get(ACTOR_HEADER, "")
    # Printable ASCII only, bounded: the value goes into a log line an operator reads.
    name = "".join(c for c in given if c.isascii() and c.isprintable())[:_ACTOR_MAX] or "-"
    return f"{name} ({'admin token' if token_required else 'loopback, no token set'})"


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def changed(request: Request, token_required: bool, action: str, target: str, before: Any, after: Any) -> None:
    actor, peer = _actor(request, token_required), _peer(request)
    log.info("audit: %s %s by %s from %s: before %s after %s", action, target, actor, peer, _compact(before),
             _compact(after), extra={"audit_action": action, "audit_target": target, "audit_actor": actor,
                                     "audit_peer": peer, "audit_before": before, "audit_after": after})


def refused(request: Request, why: str) -> None:
    peer = _peer(request)
    log.warning("audit: refused %s %s from %s: %s", request.method, request.url.path, peer, why,
                extra={"audit_action": "refused", "audit_target": request.url.path, "audit_peer": peer})
