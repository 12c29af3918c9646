"""docs/operations.md stays the reference: every setting and every exported metric is in it."""

import dataclasses
import re
from pathlib import Path

from kvroute.admin.observe import BACKEND_GAUGES, Observer
from kvroute.config import Settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


def test_every_setting_is_documented():
    documented = set(re.findall(r"`([a-z0-9_]+)`", DOC))
    # The per-tier rows are written once as `queue_threshold_high` / `_normal` / `_low`.
    for tier in ("normal", "low"):
        documented |= {f"queue_threshold_{tier}", f"max_wait_ms_{tier}"}
    missing = [f.name for f in dataclasses.fields(Settings) if f.name not in documented]
    assert not missing, f"settings missing from docs/operations.md: {missing}"


def test_every_metric_is_documented():
    names = {metric.name for metric in Observer().registry.collect()}
    names |= {name for _, name, _ in BACKEND_GAUGES}  # collected only when backends exist
    missing = [name for name in sorted(names)
               if f"`{name}`" not in DOC and f"`{name}_total`" not in DOC]
    assert not missing, f"metrics missing from docs/operations.md: {missing}"
