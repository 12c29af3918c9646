"""deploy/grafana/kvroute-dashboard.json parses, and every metric its queries read is one the router
exposes."""

from __future__ import annotations

import json
import re

import pytest

from deploy_support import DASHBOARD, dashboard_queries, metric_names


# The names kvroute/admin/observe.py declares, for a checkout where that module is missing; when it is
# importable the test reads the real registry instead.
SNAPSHOT = {
    "kvroute_requests": "counter", "kvroute_ttft_seconds": "histogram", "kvroute_e2e_seconds": "histogram",
    "kvroute_decisions": "counter", "kvroute_shed": "counter", "kvroute_queued": "counter",
    "kvroute_predicted_cached_tokens": "counter", "kvroute_reported_cached_tokens": "counter",
    "kvroute_retries": "counter", "kvroute_poll_errors": "counter", "kvroute_gc_pause_seconds": "histogram",
    "kvroute_backend_healthy": "gauge",
    "kvroute_backend_stale": "gauge", "kvroute_backend_draining": "gauge", "kvroute_backend_circuit_state": "gauge",
    "kvroute_backend_in_flight": "gauge", "kvroute_backend_waiting": "gauge", "kvroute_backend_running": "gauge",
    "kvroute_backend_kv_usage": "gauge", "kvroute_backend_prefix_cache_hit_rate": "gauge",
}
# The series names Prometheus scrapes for each metric type.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}


def _families() -> dict[str, str]:
    """metric family name -> type, from the router's real registry when the admin module is present."""
    try:
        from kvroute.admin.observe import Observer
    except ModuleNotFoundError:
        return SNAPSHOT
    from kvroute._native import Router
    from kvroute.config import Settings
    from kvroute.control.fleet import Fleet

    # A real (empty) fleet: the fleet collector still declares its families.
    observer = Observer(Fleet(Router("cost"), Settings()))
    return {family.name: family.type for family in observer.registry.collect()}


def _exposed() -> set[str]:
    return {name + suffix for name, kind in _families().items() for suffix in SUFFIXES[kind]}


def test_dashboard_parses_with_unique_ids():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_queried_metric_is_exposed():
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = _exposed()
    queried = set().union(*(metric_names(e) for e in dashboard_queries(dashboard)))
    assert queried, "no metric found in the dashboard's queries"
    assert queried <= exposed, f"the router exposes no {sorted(queried - exposed)}"


def test_the_extractor_sees_what_it_should():
    # Guards the check above against an extractor that silently finds nothing.
    expr = ('histogram_quantile(0.9, sum by (le) (rate(kvroute_ttft_seconds_bucket{namespace=~"$ns"}'
            '[$__rate_interval]))) / ignoring(branch) group_left sum(kvroute_x_total)')
    assert metric_names(expr) == {"kvroute_ttft_seconds_bucket", "kvroute_x_total"}


def test_snapshot_matches_the_registry():
    # Keeps the fallback honest: it must say what the router really declares.
    pytest.importorskip("kvroute.admin.observe")
    assert _families() == SNAPSHOT
