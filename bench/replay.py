"""Replayed placements: another contender's choices of backend, sent through kvroute's own data plane.

`replay:<contender>` runs kvroute with the `pinned` policy after `<contender>` ran the same point
(same workload, load and seed), each request carrying in `x-session-id` the backend that contender
sent it to. The placements are then equal and only the gateways differ: if `replay:X` matches X's
latencies, a gap between X and kvroute is the policy's; if it does not, it is the data plane's or
the workload's timing. Where each request was served is read from the stream itself: the
simulator ends every response id with its instance's index (`kvroute.sim.server.SERVED_BY`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from bench.workloads import Workload
from kvroute.control.fleet import backend_id_for
from kvroute.loadgen import RequestSpec, Result
from kvroute.sim.server import SERVED_BY

PREFIX = "replay:"
PIN_HEADER = "x-session-id"  # the key `pinned` reads: a backend id


def source_of(contender: str) -> str | None:
    """The contender whose placements `contender` replays; None when it replays none."""
    return contender[len(PREFIX):] if contender.startswith(PREFIX) else None


def served_by(results: Sequence[Result]) -> dict[int, int]:
    """Request index -> index of the fleet instance that served it, for every request whose
    stream named one (a failed request, or a backend that is not the simulator, names none)."""
    out: dict[int, int] = {}
    for r in results:
        if r.response_id:
            _, sep, instance = r.response_id.rpartition(SERVED_BY)
            if sep and instance.isdigit():
                out[r.index] = int(instance)
    return out


def pinned(workload: Workload, placements: dict[int, int], urls: Sequence[str]) -> Workload:
    """`workload` with each request pinned to the backend `placements` names. Requests without a
    placement go unpinned (`pinned` then picks the least busy); the share pinned is recorded."""
    ids = [backend_id_for(u) for u in urls]
    requests: list[RequestSpec] = []
    for i, spec in enumerate(workload.requests):
        instance = placements.get(i)
        if instance is not None:
            spec = dataclasses.replace(spec, headers={**spec.headers, PIN_HEADER: ids[instance]})
        requests.append(spec)
    share = sum(1 for i in range(len(requests)) if i in placements) / len(requests) if requests else 0.0
    params = {**workload.params, "replayed_share": share}
    return dataclasses.replace(workload, requests=requests, params=params)


def run_order(names: Sequence[str]) -> list[str]:
    """`names` with every replay after the contender it replays (stable otherwise)."""
    return sorted(names, key=lambda n: source_of(n) is not None)
