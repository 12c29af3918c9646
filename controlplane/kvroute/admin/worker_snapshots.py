"""Whole-router numbers for worker 0's `/metrics` and admin views when `serve --workers N` runs.

Every worker counts its own requests (its Observer) and holds its own in-flight counts (its core);
worker 0 alone serves the admin API. So each other worker writes a snapshot of those numbers to a
file of its own every poll interval, and once more when it stops (after its last requests finished),
and worker 0 adds the snapshots of the live workers to its own live numbers when it is asked.

Why files, written off the request path and merged at read time:
- nothing new on the request path: a worker snapshots its Observer's counters and histograms from a
  background task, so a request costs what it did; a single-process router has no snapshots at all;
- no addresses between workers and no process-global state: each Observer keeps its own registry
  (prometheus_client's multiprocess mode would make every Counter in the process write to mmap'd
  files named by one environment variable, which several gateways in one process cannot share);
- a file replaced atomically is never half written, and a worker that hangs keeps its last numbers.

The price is lag: another worker's numbers are up to one poll interval old. Counters and histograms
are summed series by series (histograms bucket by bucket: every worker uses the same buckets; a
series' `_created` is the earliest), per-backend in-flight counts are summed, and the fleet state
that comes from polling (health, kv usage, running, waiting, circuit) stays worker 0's own, since
every worker polls the same backends.

A snapshot counts while its worker's process is alive, or for a few poll intervals after it was
written (a worker that just stopped still shows its last requests while the others drain). The files
are named after the supervisor process, so a later run never reads an earlier run's files.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.metrics_core import Metric

from kvroute.control.atomic_file import ChangedFile, write_atomically
from kvroute.loops import every
from kvroute.workers import run_file, worker_index

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("kvroute.admin.worker_snapshots")

# Totals of Observer.totals() that add up over workers (uptime does not).
SUMMED_TOTALS = ("requests_total", "errors_total", "ttft_sum_s", "ttft_count")
# A stopped worker's last snapshot still counts this many poll intervals after it was written.
KEEP_AFTER_EXIT_INTERVALS = 3

Sample = tuple[str, dict[str, str], float]  # (sample name, labels, value)


@dataclass(frozen=True)
class Snapshot:
    worker: int
    pid: int
    written: float  # time.time() when taken
    families: dict[str, list[Sample]]  # the Observer's counters and histograms, by family name
    totals: dict[str, float]
    in_flight: dict[str, int]  # backend id -> requests in flight there (nonzero only)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        raw = json.loads(data)
        families = {name: [(str(n), dict(labels), float(v)) for n, labels, v in samples]
                    for name, samples in raw["families"].items()}
        return cls(worker=int(raw["worker"]), pid=int(raw["pid"]), written=float(raw["written"]),
                   families=families, totals={k: float(v) for k, v in raw["totals"].items()},
                   in_flight={k: int(v) for k, v in raw["in_flight"].items()})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class WorkerSnapshots:
    """The snapshot files of one run: `{prefix}-{worker}-metrics.json`, one per worker but 0."""

    def __init__(self, prefix: Path, worker: int, poll_interval: float, clock: Callable[[], float] = time.time) -> None:
        self.prefix = prefix
        self.worker = worker
        self.keep_after_exit = KEEP_AFTER_EXIT_INTERVALS * poll_interval
        self.clock = clock
        # path -> (the file, what it held when last read); a file changes at most once per poll
        # interval, and worker 0 reads them all on every admin call, on the event loop the proxy runs on.
        self._read: dict[Path, tuple[ChangedFile, Snapshot | None]] = {}

    def path(self, worker: int) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}-{worker}-metrics.json")

    def _files(self) -> list[Path]:
        return sorted(self.prefix.parent.glob(f"{self.prefix.name}-*-metrics.json"))

    def write(self, snapshot: Snapshot) -> None:
        write_atomically(self.path(snapshot.worker), snapshot.encode())

    def others(self) -> list[Snapshot]:
        """The latest snapshot of every other worker that is alive or stopped only just now."""
        found = []
        paths = self._files()
        for gone in self._read.keys() - set(paths):
            del self._read[gone]
        for path in paths:
            snapshot = self._snapshot(path)
            if snapshot is None or snapshot.worker == self.worker:
                continue
            if _alive(snapshot.pid) or self.clock() - snapshot.written <= self.keep_after_exit:
                found.append(snapshot)
        return found

    def _snapshot(self, path: Path) -> Snapshot | None:
        """The file's snapshot, parsed again only when the file changed; None if gone or unreadable."""
        cached = self._read.get(path)
        file = cached[0] if cached is not None else ChangedFile(path)
        try:
            data = file.read_if_changed()
        except FileNotFoundError:  # removed between the listing and the read
            self._read.pop(path, None)
            return None
        if data is None:
            assert cached is not None  # a file never read is always read
            return cached[1]
        try:
            snapshot: Snapshot | None = Snapshot.decode(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("worker snapshot %s unreadable, ignored: %s", path, exc)
            snapshot = None
        self._read[path] = (file, snapshot)
        return snapshot


def for_worker(settings: Any, environ: Mapping[str, str] = os.environ) -> WorkerSnapshots | None:
    """The run's snapshots for a worker of `serve --workers N`; None for a router of one process."""
    worker = worker_index(settings, environ)
    if worker is None:
        return None
    return WorkerSnapshots(run_file("worker"), worker, settings.poll_interval)


async def write_forever(snapshots: WorkerSnapshots, take: Callable[[], Snapshot], interval: float) -> None:
    """A worker but 0 of `serve --workers N`: write this worker's snapshot every interval until
    cancelled (the gateway writes a last one after its proxy drained)."""
    await every(interval, lambda: snapshots.write(take()), log, "writing this worker's metrics snapshot")


def merge_families(local: Iterable[Metric], others: Sequence[Snapshot]) -> Iterator[Metric]:
    """Each family with the others' samples added series by series (the same name and labels)."""
    for family in local:
        values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        labels_of: dict[tuple[str, frozenset[tuple[str, str]]], dict[str, str]] = {}
        samples: list[Sample] = [(s.name, s.labels, s.value) for s in family.samples]
        for snapshot in others:
            samples.extend(snapshot.families.get(family.name, ()))
        for name, labels, value in samples:
            key = (name, frozenset(labels.items()))
            if key not in values:
                values[key], labels_of[key] = value, labels
            else:  # a series' start is its earliest worker's; everything else adds up
                values[key] = (min if name.endswith("_created") else operator.add)(values[key], value)
        merged = Metric(family.name, family.documentation, family.type, family.unit)
        for key, value in values.items():
            merged.add_sample(key[0], labels_of[key], value)
        yield merged


def summed_in_flight(others: Sequence[Snapshot]) -> dict[str, int]:
    total: dict[str, int] = {}
    for snapshot in others:
        for backend_id, count in snapshot.in_flight.items():
            total[backend_id] = total.get(backend_id, 0) + count
    return total


def summed_totals(local: Mapping[str, float], others: Sequence[Snapshot]) -> dict[str, float]:
    totals = dict(local)
    for snapshot in others:
        for key in SUMMED_TOTALS:
            totals[key] += snapshot.totals.get(key, 0)
    return totals


class RouterWideCollector:
    """Worker 0's registry with the other workers' snapshots added: what its /metrics renders.
    `in_flight_family` names the per-backend in-flight gauge (observe.BACKEND_GAUGES)."""

    def __init__(self, registry: CollectorRegistry, recorded: set[str], others: Sequence[Snapshot],
                 in_flight_family: str) -> None:
        self.registry, self.recorded, self.others = registry, recorded, others
        self.in_flight_family = in_flight_family

    def collect(self) -> Iterator[Metric]:
        in_flight = summed_in_flight(self.others)
        for family in self.registry.collect():
            if family.name in self.recorded:
                yield from merge_families([family], self.others)
            elif family.name == self.in_flight_family:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                for s in family.samples:
                    merged.add_sample(s.name, s.labels, s.value + in_flight.get(s.labels["backend"], 0))
                yield merged
            else:
                yield family


__all__ = ["RouterWideCollector", "Snapshot", "WorkerSnapshots", "for_worker", "merge_families",
           "summed_in_flight", "summed_totals", "write_forever"]
