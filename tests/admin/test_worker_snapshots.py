"""Worker 0 reports the whole router (kvroute.admin.worker_snapshots): the merge of the other workers'
snapshot files into its own numbers, and which files count. Real Observers record real samples; the
files are real files in a temporary directory."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvroute._native import Router
from kvroute.admin.observe import LATENCY_BUCKETS, Observer
from kvroute.admin.observe import take
from kvroute.admin.worker_snapshots import Snapshot, WorkerSnapshots, for_worker, summed_in_flight
from kvroute.config import Settings
from kvroute.control.fleet import Fleet
from kvroute.workers import WORKER_ENV, remove_run_files
from tests.admin.shedding import shed_one_low


def samples(page: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(page.decode()) for s in family.samples}


def with_core() -> tuple[Observer, Router]:
    """An Observer over a real core with one backend serving model m (the core counts the sheds)."""
    router = Router("round_robin")
    fleet = Fleet(router)
    fleet.add("http://127.0.0.1:9", models=["m"])
    return Observer(fleet), router


def worker(observer: Observer, index: int) -> Snapshot:
    return take(observer, Fleet(Router("round_robin")), index)


def files(tmp_path: Path, index: int) -> WorkerSnapshots:
    return WorkerSnapshots(tmp_path / "kvroute-1-worker", index, poll_interval=0.2)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def test_counters_and_histograms_add_up_series_by_series(tmp_path):
    (zero, _), (one, one_core) = with_core(), with_core()
    zero.request_done("m", "a:1", 200, "normal", 0.02, 0.3)
    zero.request_done("m", "a:1", 200, "normal", 0.2, 7.0)
    one.request_done("m", "a:1", 200, "normal", 0.04, 0.3)
    one.request_done("m", "b:2", 503, "low", None, 0.001)  # a series worker 0 has never seen
    shed_one_low(one_core)
    files(tmp_path, 1).write(worker(one, 1))
    zero.peers = files(tmp_path, 0)

    merged = samples(zero.render())
    alone = [samples(generate_latest(o.registry)) for o in (zero, one)]

    def total(key: tuple[str, frozenset[tuple[str, str]]]) -> float:
        return sum(page.get(key, 0.0) for page in alone)

    added = [key for key in merged if key[0].startswith("kvroute_") and not key[0].startswith("kvroute_backend")
             and not key[0].endswith("_created")]
    assert added and all(merged[key] == total(key) for key in added)
    a_requests = ("kvroute_requests_total",
                  frozenset({"model": "m", "backend": "a:1", "status": "200", "priority": "normal"}.items()))
    assert merged[a_requests] == 3
    assert merged[("kvroute_requests_total", frozenset(
        {"model": "m", "backend": "b:2", "status": "503", "priority": "low"}.items()))] == 1
    assert merged[("kvroute_shed_total", frozenset({"tier": "low"}.items()))] == 1
    # Bucket by bucket: 0.02 (worker 0) and 0.04 (worker 1) in <= 0.05, 0.2 only in <= 0.25 and up.
    ttft = {float(dict(labels)["le"]): value for (name, labels), value in merged.items()
            if name == "kvroute_ttft_seconds_bucket" and dict(labels)["backend"] == "a:1"}
    assert sorted(ttft) == sorted([*LATENCY_BUCKETS, float("inf")])
    assert [ttft[le] for le in (0.01, 0.025, 0.05, 0.1, 0.25, float("inf"))] == [0, 1, 2, 2, 3, 3]
    e2e_a = frozenset({"backend": "a:1"}.items())
    assert merged[("kvroute_e2e_seconds_count", e2e_a)] == 3
    assert merged[("kvroute_e2e_seconds_sum", e2e_a)] == 7.6
    # A series starts when its first worker saw it, not at the sum of their start times.
    created = ("kvroute_e2e_seconds_created", e2e_a)
    assert merged[created] == min(page[created] for page in alone)

    totals = zero.router_totals(zero.others())
    assert (totals["requests_total"], totals["errors_total"], totals["ttft_count"]) == (4, 1, 3)


def test_in_flight_adds_up_per_backend_and_fleet_gauges_stay_worker_zeros(tmp_path):
    router = Router("round_robin")
    fleet = Fleet(router)
    fleet.add("http://127.0.0.1:9", models=["m"])
    zero = Observer(fleet)
    snapshot = replace(worker(Observer(), 1), in_flight={"127.0.0.1:9": 3, "gone:1": 1})
    files(tmp_path, 1).write(snapshot)
    zero.peers = files(tmp_path, 0)
    merged = samples(zero.render())
    backend = frozenset({"backend": "127.0.0.1:9"}.items())
    assert merged[("kvroute_backend_in_flight", backend)] == 3
    assert merged[("kvroute_backend_healthy", backend)] == 1  # polled state: worker 0's, not summed
    assert summed_in_flight(zero.others()) == {"127.0.0.1:9": 3, "gone:1": 1}


def test_which_snapshot_files_count(tmp_path):
    reader = files(tmp_path, 0)
    now = reader.clock()
    long_ago = now - 3600
    base = worker(Observer(), 1)
    files(tmp_path, 1).write(replace(base, worker=1, pid=dead_pid(), written=long_ago))  # stopped long ago
    files(tmp_path, 2).write(replace(base, worker=2, pid=dead_pid(), written=now))  # stopped just now
    files(tmp_path, 3).write(replace(base, worker=3, written=long_ago))  # alive (this process) but slow
    files(tmp_path, 0).write(replace(base, worker=0))  # the reader's own numbers are live, not a file
    files(tmp_path, 4).path(4).write_text("{not json")
    WorkerSnapshots(tmp_path / "kvroute-2-worker", 5, 0.2).write(replace(base, worker=5))  # another run
    assert sorted(s.worker for s in reader.others()) == [2, 3]

    remove_run_files(1, tmp_path)  # what the supervisor does once its workers exited (this run's pid: 1)
    assert reader.others() == [] and sorted(p.name for p in tmp_path.iterdir()) == ["kvroute-2-worker-5-metrics.json"]


def test_a_router_of_one_process_has_no_snapshots_and_renders_as_before():
    assert for_worker(Settings(workers=1), {WORKER_ENV: "0"}) is None
    assert for_worker(Settings(workers=2), {}) is None  # the supervisor itself
    assert for_worker(Settings(workers=2), {WORKER_ENV: "1"}).worker == 1
    observer = Observer()
    observer.request_done("m", "a:1", 200, "normal", 0.02, 0.3)
    assert observer.others() == []
    assert observer.render() == generate_latest(observer.registry)
