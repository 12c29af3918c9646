"""deploy/helm/kvroute without helm (not installable here): values.yaml and the templates agree in both
directions, the chart's kvroute.yaml only names Settings keys, and the chart matches the package."""

from __future__ import annotations

import re
import tomllib
from typing import Any, Iterator

import pytest
import yaml

from deploy_support import DEPLOY, ROOT, SETTINGS_KEYS
from kvroute.config import from_mapping

CHART = DEPLOY / "helm" / "kvroute"
TEMPLATES = sorted((CHART / "templates").glob("*"))
VALUES_REF = re.compile(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _values() -> dict[str, Any]:
    loaded = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _leaf_paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths to every value that is not a non-empty mapping ({} and [] are leaves: toYaml fills them)."""
    for key, value in tree.items():
        path = prefix + (key,)
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, path)
        else:
            yield path


def _references() -> set[tuple[str, ...]]:
    found = set()
    for template in TEMPLATES:
        for match in VALUES_REF.finditer(template.read_text()):
            found.add(tuple(match.group(1).strip(".").split(".")))
    return found


def _lookup(tree: Any, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def test_chart_metadata_matches_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name == project["name"]
    # The image tag defaults to appVersion; the image is built from this package version.
    assert chart["appVersion"] == project["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])


def test_every_values_reference_exists():
    values = _values()
    missing = sorted(".".join(path) for path in _references() if not _lookup(values, path))
    assert not missing, f"templates use keys values.yaml lacks: {missing}"


def test_every_value_is_used():
    references = _references()
    unused = [".".join(path) for path in _leaf_paths(_values())
              if not any(path[:n] in references for n in range(1, len(path) + 1))]
    assert not unused, f"values.yaml keys no template reads: {unused}"


def test_every_include_is_defined():
    text = "\n".join(t.read_text() for t in TEMPLATES)
    defined = set(re.findall(r'define\s+"([^"]+)"', text))
    used = set(re.findall(r'include\s+"([^"]+)"', text))
    assert used <= defined, f"undefined templates: {sorted(used - defined)}"


def test_template_actions_are_balanced():
    # A cheap stand-in for helm's parser: every if/with/range/define has its end.
    for template in TEMPLATES:
        actions = re.findall(r"\{\{-?\s*(if|with|range|define|end)\b", template.read_text())
        depth = 0
        for action in actions:
            depth += -1 if action == "end" else 1
            assert depth >= 0, f"{template.name}: `end` without an opening action"
        assert depth == 0, f"{template.name}: {depth} unclosed action(s)"


def test_configmap_writes_only_settings_keys():
    text = (CHART / "templates" / "configmap.yaml").read_text()
    block = text.split("kvroute.yaml: |", 1)[1]
    keys = set(re.findall(r"^ {4}([a-z][a-z0-9_]*):", block, flags=re.M))
    assert keys, "no keys found in the chart's kvroute.yaml"
    assert keys <= SETTINGS_KEYS, f"not Settings keys: {sorted(keys - SETTINGS_KEYS)}"
    # Credentials and per-pod facts stay out of the ConfigMap.
    assert not keys & {"admin_token", "api_key_tiers", "k8s_namespace", "host"}


def test_free_form_config_values_are_settings():
    from_mapping(_values()["config"], "deploy/helm/kvroute/values.yaml: config")


@pytest.mark.parametrize("tier", ["high", "normal", "low"])
def test_tiers_map_to_settings(tier):
    values = _values()["tiers"][tier]
    from_mapping({f"queue_threshold_{tier}": values["queueThreshold"], f"max_wait_ms_{tier}": values["maxWaitMs"]},
                 "values.yaml tiers")


def test_defaults_are_valid_settings():
    values = _values()
    from_mapping({
        "policy": values["policy"], "workers": values["workers"], "discovery": values["discovery"]["mode"],
        "backend": values["discovery"]["backends"], "discovery_interval": values["discovery"]["interval"],
        "dns_port": values["discovery"]["dns"]["port"], "k8s_port_name": values["discovery"]["kubernetes"]["portName"],
        "grace_period": values["gracePeriod"], "log_format": values["logFormat"], "log_level": values["logLevel"],
    }, "values.yaml")


def test_chart_and_plain_manifests_probe_the_same_endpoints():
    chart = (CHART / "templates" / "deployment.yaml").read_text()
    plain = (DEPLOY / "kubernetes" / "deployment.yaml").read_text()
    for needle in ("path: /health", "path: /ready", '"serve", "--config", "/etc/kvroute/kvroute.yaml"',
                   "KVROUTE_ADMIN_TOKEN", "KVROUTE_K8S_NAMESPACE", "runAsUser: 10001"):
        assert needle in chart and needle in plain, needle
