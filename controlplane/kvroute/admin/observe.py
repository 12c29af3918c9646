"""The router's own Prometheus metrics, and the small recording API the data plane calls.

Counters and histograms record events (the proxy calls `request_done` and `retry`; the poller calls
`poll_error`). What the native core already counts (decisions by branch, sheds and queued requests
by tier) and backend state (health, circuit, load) are not recorded here at all: collectors read the
core and the fleet at scrape time, so nothing is counted twice and nothing can drift.
Each Observer has its own registry: no process-global state, several gateways can share a process.
With `serve --workers N`, worker 0's Observer also reads the other workers' snapshots (`peers`) and
renders and totals the whole router (kvroute.admin.worker_snapshots).
"""

from __future__ import annotations

import gc
import os
import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kvroute import BRANCHES
from kvroute.admin.worker_snapshots import (SUMMED_TOTALS, RouterWideCollector, Snapshot, WorkerSnapshots,
                                            summed_totals)

if TYPE_CHECKING:
    from kvroute._native import Router
    from kvroute.control.fleet import Fleet

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Python's cyclic collector stops the event loop while it runs: under 1 ms is harmless, tens of ms
# stall every stream in flight.
GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
# Latency buckets for LLM serving: TTFT spans ~10 ms (cache hit, idle) to tens of seconds (queued).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CIRCUIT_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


# (state key, metric name, help): one gauge per backend for each; None values are left out.
BACKEND_GAUGES = (
    ("healthy", "kvroute_backend_healthy", "1 if the backend passes its polls"),
    ("stale", "kvroute_backend_stale", "1 if the last metrics poll failed"),
    ("draining", "kvroute_backend_draining", "1 if the backend takes no new requests"),
    ("circuit", "kvroute_backend_circuit_state", "circuit breaker: 0 closed, 1 half-open, 2 open"),
    ("in_flight", "kvroute_backend_in_flight", "requests the router has in flight there"),
    ("waiting", "kvroute_backend_waiting", "vLLM's waiting requests, last poll"),
    ("running", "kvroute_backend_running", "vLLM's running requests, last poll"),
    ("kv_usage", "kvroute_backend_kv_usage", "vLLM's KV cache usage (0-1), last poll"),
    ("prefix_cache_hit_rate", "kvroute_backend_prefix_cache_hit_rate",
     "vLLM's prefix cache hits / queries since its start"),
)
# Summed over workers in a router of several processes (the other gauges are every worker's own poll).
IN_FLIGHT_GAUGE = next(name for key, name, _ in BACKEND_GAUGES if key == "in_flight")


class FleetCollector(Collector):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = [(key, GaugeMetricFamily(name, help_text, labels=["backend"]))
                    for key, name, help_text in BACKEND_GAUGES]
        for backend in self.fleet.all():
            state = self.fleet.state(backend)
            state["circuit"] = CIRCUIT_VALUES[state["circuit"]]
            for key, family in families:
                if state[key] is not None:
                    family.add_metric([backend.id], float(state[key]))
        for _, family in families:
            yield family


class CoreCounters(Collector):
    """The core's decision counters as Prometheus counters, read from `Router.snapshot()` at scrape
    time: decisions by policy branch, requests refused by admission (shed or queue full) and requests
    queued, by tier."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def _families(self) -> tuple[CounterMetricFamily, ...]:
        return (CounterMetricFamily("kvroute_decisions", "Routing decisions, by the policy branch that made them",
                                    labels=["branch"]),
                CounterMetricFamily("kvroute_shed", "Requests refused by admission control, by tier", labels=["tier"]),
                CounterMetricFamily("kvroute_queued", "Requests held in the router's wait queue, by tier",
                                    labels=["tier"]),
                # Their ratio is the accuracy of the router's cache view (exact with KV events and a
                # tokenizer, an estimate otherwise), per backend.
                CounterMetricFamily("kvroute_predicted_cached_tokens",
                                    "Prompt tokens the router predicted cached at routing, per backend", labels=["backend"]),
                CounterMetricFamily("kvroute_reported_cached_tokens",
                                    "Prompt tokens the backend reported cached (usage.prompt_tokens_details), per backend",
                                    labels=["backend"]))

    def describe(self) -> list[CounterMetricFamily]:
        return list(self._families())

    def collect(self) -> list[CounterMetricFamily]:
        snapshot = self.router.snapshot()
        decisions, shed, queued, predicted, reported = self._families()
        for branch, count in snapshot["branches"].items():
            if branch in BRANCHES:  # the core counts its refusals there too, by reason
                decisions.add_metric([branch], count)
        for tier, counts in snapshot["tiers"].items():
            shed.add_metric([tier], counts["shed"] + counts["queue_full"])
            queued.add_metric([tier], counts["queued"])
        for backend in snapshot["backends"]:
            predicted.add_metric([backend["id"]], backend["hits"]["predicted_cached_tokens"])
            reported.add_metric([backend["id"]], backend["hits"]["reported_cached_tokens"])
        return [decisions, shed, queued, predicted, reported]


class _Children:
    """Memoised `metric.labels(...)`: prometheus_client validates and locks on every labels() call
    (about 3 µs each, measured 15 µs per request in all), while the data plane asks for the same few
    label sets on every request."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self.cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.cache.get(values)
        if child is None:
            child = self.cache[values] = self.metric.labels(*values)
        return child


class Observer:
    def __init__(self, fleet: Fleet | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("kvroute_requests", "Requests finished, by model, backend, HTTP status and priority",
                                ["model", "backend", "status", "priority"], registry=r)
        self.ttft = Histogram("kvroute_ttft_seconds", "Time to first token seen by the router, per backend",
                              ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("kvroute_e2e_seconds", "End-to-end request latency seen by the router, per backend",
                             ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("kvroute_retries", "Upstream attempts retried on another backend, by the failed one",
                               ["backend"], registry=r)
        self.poll_errors = Counter("kvroute_poll_errors", "Failed backend polls, by backend and kind "
                                   "(connect, timeout, too_large, http_status, parse, stale)", ["backend", "kind"], registry=r)
        self.gc_pauses = Histogram("kvroute_gc_pause_seconds", "Runs of Python's cyclic garbage collector, by the "
                                   "oldest generation collected: the event loop stands still while one runs",
                                   ["generation"], buckets=GC_PAUSE_BUCKETS, registry=r)
        self._gc_started = 0.0
        # What adds up over workers; the fleet gauges come from polling, the same in every worker.
        self.recorded: tuple[Collector, ...] = (self.requests, self.ttft, self.e2e, self.retries, self.poll_errors,
                                                self.gc_pauses)
        if fleet is not None:
            r.register(FleetCollector(fleet))
            core = CoreCounters(fleet.router)
            r.register(core)
            self.recorded += (core,)
        self._recorded_names = {family.name for metric in self.recorded for family in metric.describe()}
        # Worker 0 of `serve --workers N`: the other workers' snapshot files (set by the admin API).
        self.peers: WorkerSnapshots | None = None
        self._requests = _Children(self.requests)
        self._ttft, self._e2e = _Children(self.ttft), _Children(self.e2e)
        self._gc_pause = _Children(self.gc_pauses)
        self.started = time.time()

    def request_done(self, model: str, backend: str, status: int | str, priority: str,
                     ttft_s: float | None, e2e_s: float | None) -> None:
        """One client request finished (any outcome). backend "" when none was chosen; ttft_s None when
        no token came back."""
        backend = backend or "none"
        self._requests(model, backend, str(status), priority).inc()
        if ttft_s is not None:
            self._ttft(backend).observe(ttft_s)
        if e2e_s is not None:
            self._e2e(backend).observe(e2e_s)

    def watch_gc(self, on: bool = True) -> None:
        """Time every collection of this process into `kvroute_gc_pause_seconds` (off: stop)."""
        if on:
            gc.callbacks.append(self._gc_phase)
        elif self._gc_phase in gc.callbacks:
            gc.callbacks.remove(self._gc_phase)

    def _gc_phase(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_pause(str(info["generation"])).observe(time.perf_counter() - self._gc_started)

    def retry(self, backend: str) -> None:
        self.retries.labels(backend).inc()

    def poll_error(self, backend: str, kind: str) -> None:
        self.poll_errors.labels(backend, kind).inc()

    def totals(self) -> dict[str, float]:
        """Running totals for the status page's charts (it differentiates them itself), added up from
        the collectors at read time: no second count beside them."""
        requests = errors = 0
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    requests += int(sample.value)
                    errors += 0 if sample.labels["status"].startswith("2") else int(sample.value)
        ttft_sum, ttft_count = 0.0, 0
        for family in self.ttft.collect():
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    ttft_sum += sample.value
                elif sample.name.endswith("_count"):
                    ttft_count += int(sample.value)
        return {"uptime_s": time.time() - self.started, "requests_total": requests, "errors_total": errors,
                "ttft_sum_s": ttft_sum, "ttft_count": ttft_count}

    def others(self) -> list[Snapshot]:
        """The other workers' latest numbers; none in a router of one process."""
        return self.peers.others() if self.peers is not None else []

    def router_totals(self, others: list[Snapshot]) -> dict[str, float]:
        return summed_totals(self.totals(), others)

    def render(self) -> bytes:
        others = self.others()
        if not others:
            return generate_latest(self.registry)
        return generate_latest(RouterWideCollector(self.registry, self._recorded_names, others, IN_FLIGHT_GAUGE))


def take(observer: Observer, fleet: Fleet, worker: int) -> Snapshot:
    """This worker's numbers as a snapshot for worker 0 to add up (admin/worker_snapshots.py)."""
    families = {family.name: [(s.name, dict(s.labels), s.value) for s in family.samples]
                for metric in observer.recorded for family in metric.collect()}
    totals = observer.totals()
    in_flight = {b.id: n for b in fleet.all() if (n := fleet.router.in_flight(b.id))}
    return Snapshot(worker=worker, pid=os.getpid(), written=time.time(), families=families,
                    totals={key: float(totals[key]) for key in SUMMED_TOTALS}, in_flight=in_flight)


__all__ = ["CONTENT_TYPE", "FleetCollector", "Observer", "take"]
