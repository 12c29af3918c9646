"""The admin API's changes as one JSON document that every worker process applies.

`kvroute serve --workers N` runs N gateways, each with its own core and fleet, and only worker 0
serves the admin API. Worker 0 records each change it makes (drain, undrain, add, remove, policy,
weights, admission limits) in this document and replaces the file atomically (write aside, rename
over); every worker, worker 0 included, re-reads the file each poll interval and brings its own
gateway in line. A file rather than a control socket: it needs no addresses between workers, a
worker that starts late catches up by reading it, and the same file keeps the changes across a
restart when `admin_state_file` names a lasting place.

The document is the operator's wanted state, applied idempotently: the policy, the admission limits,
which backends the operator drained and which it added. A removal is an event rather than a state,
since discovery may bring the address back later exactly as it can in one process: each removal
carries the serial of the change that made it and is applied once per worker.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from kvroute.control.atomic_file import ChangedFile, write_atomically
from kvroute.control.fleet import backend_id_for
from kvroute.loops import every
from kvroute.workers import run_file, worker_index

if TYPE_CHECKING:
    from kvroute.control.operator import Operator

log = logging.getLogger("kvroute.control.shared_state")

@dataclass
class AdminState:
    serial: int = 0  # bumped by every change; a worker applies a file it has not applied yet
    policy: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    admission: dict[str, float] = field(default_factory=dict)  # queue_threshold_* / max_wait_ms_*
    drained: list[str] = field(default_factory=list)
    added: dict[str, str] = field(default_factory=dict)  # backend id -> URL
    removed: dict[str, int] = field(default_factory=dict)  # backend id -> serial of its removal

    @classmethod
    def parse(cls, text: str) -> AdminState:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def state_path(settings: Any, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the document lives: `admin_state_file`, or for the workers of one `serve --workers N`
    without it, a file named after their supervisor (the parent of every worker): shared by the
    workers of this run only, so nothing carries over to the next."""
    if settings.admin_state_file:
        return Path(settings.admin_state_file)
    if worker_index(settings, environ) is not None:
        return run_file("admin-state.json")
    return None


class SharedAdminState:
    """One gateway's side of the shared document: records worker 0's changes, applies everyone's."""

    def __init__(self, operator: Operator, path: Path | None) -> None:
        self.operator = operator  # applies every change; this class only records and reads them
        self.path = path
        self.state = AdminState()
        self.applied = 0  # serial of the last document this gateway applied
        self._file = ChangedFile(path) if path is not None else None

    # -- recording (worker 0, from the admin API) -------------------------------------------

    def drained(self, backend_id: str, drained: bool) -> None:
        others = {d for d in self.state.drained if d != backend_id}
        self.state.drained = sorted(others | {backend_id} if drained else others)
        self._publish()

    def added(self, url: str) -> None:
        backend_id = backend_id_for(url)
        self.state.added[backend_id] = url.rstrip("/")
        self.state.removed.pop(backend_id, None)
        self._publish()

    def removed(self, backend_id: str) -> None:
        self.state.added.pop(backend_id, None)
        self.state.drained = [d for d in self.state.drained if d != backend_id]
        self.state.removed[backend_id] = self.state.serial + 1
        self._publish()

    def policy(self, name: str, weights: dict[str, float], admission: dict[str, float]) -> None:
        self.state.policy, self.state.weights = name, dict(weights)
        self.state.admission.update(admission)
        self._publish()

    def _publish(self) -> None:
        self.state.serial += 1
        self.applied = self.state.serial  # this gateway made the change itself
        if self._file is None:
            return
        data = json.dumps(asdict(self.state), sort_keys=True).encode()
        write_atomically(self._file.path, data)  # other workers read it at any moment
        self._file.written()

    # -- applying (every worker) ------------------------------------------------------------

    def _read(self) -> AdminState | None:
        """The document if it changed since the last read; None when unchanged, absent or unreadable."""
        if self._file is None:
            return None
        try:
            data = self._file.read_if_changed()
        except FileNotFoundError:
            return None
        if data is None:
            return None
        try:
            return AdminState.parse(data.decode())
        except (ValueError, TypeError) as exc:  # a hand-edited file: keep what we have, say why
            log.error("admin state file %s unreadable, ignored: %s", self.path, exc)
            return None

    async def refresh(self) -> None:
        """Read the file if it changed and apply it; re-apply drains every time, since a backend
        this worker discovers after the drain must come up drained too."""
        read = self._read()
        if read is not None:
            self.state = read
        await self._apply()

    async def _apply(self) -> None:
        state, operator, fleet = self.state, self.operator, self.operator.fleet
        name, weights = operator.router.policy()
        if state.policy is not None and (name, dict(weights)) != (state.policy, state.weights):
            operator.set_policy(state.policy, state.weights)
        current = operator.limits()
        if any(current.get(key) != value for key, value in state.admission.items()):
            operator.set_policy(limits=state.admission)
        for backend_id, url in state.added.items():
            backend = fleet.get(backend_id)
            if backend is None or backend.retiring:
                await operator.add(url)
        operator.remove(*(b for b, serial in state.removed.items() if serial > self.applied and fleet.get(b) is not None))
        drained = set(state.drained)
        for backend in fleet.all():
            operator.drain(backend.id, backend.id in drained)
        if state.serial > self.applied:
            log.info("applied admin state %d from %s", state.serial, self.path)
            self.applied = state.serial

    async def run(self, interval: float) -> None:
        """Follow the file until cancelled; one bad document does not stop the worker taking the next."""
        await every(interval, self.refresh, log, "applying the admin state", sleep_first=True)


__all__ = ["AdminState", "SharedAdminState", "state_path"]
