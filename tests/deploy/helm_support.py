"""The Helm chart's values sets and an offline render of them (helm-python-sdk runs Helm's own Go code:
no cluster, `lookup` returns nothing), shared by the render and checkov tests."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from deploy_support import DEPLOY

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the dev extra) not installed")

CHART = DEPLOY / "helm" / "kvroute"
NAMESPACE = "kvroute"
# Kinds whose schema lives in a CRD (the Prometheus Operator's), not in Kubernetes' own OpenAPI.
CRD_KINDS = {"ServiceMonitor"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    # The guide's Helm path: the admin Secret from step 2, tiers, the ServiceMonitor.
    "guide": {"adminToken": {"existingSecret": "kvroute-admin"}, "apiKeyTiers": {"sk-a": "high", "sk-b": "low"},
              "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
              "image": {"repository": "registry.example.com/kvroute", "tag": "0.1.0"}},
    "dns-no-rbac": {"discovery": {"mode": "dns"}, "rbac": {"create": False}, "replicaCount": 3,
                    "config": {"retry_attempts": 3}, "adminToken": {"value": "a-fixed-token"}},
    "static-scheduled": {"discovery": {"mode": "static", "backends": ["http://10.0.0.5:8000"]},
                         "serviceAccount": {"create": False}, "podDisruptionBudget": {"enabled": False},
                         "nodeSelector": {"kvroute/pool": "system"}, "podAnnotations": {"team": "ml"},
                         "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "router",
                                          "effect": "NoSchedule"}],
                         "imagePullSecrets": [{"name": "registry"}], "gracePeriod": 120},
    # The tokenizer from a PersistentVolumeClaim (no init container), under a served alias; no replay.
    "tokenizer-pvc": {"tokenizer": {"model": "qwen-chat", "repository": "Qwen/Qwen2.5-1.5B-Instruct",
                                    "mountPath": "/models/tokenizers",
                                    "volume": {"persistentVolumeClaim": {"claimName": "tokenizers", "readOnly": True}}},
                      "kvEvents": {"replayPort": 0}},
    # The router as before the exact view: no KV events, no tokenizer (bytes key space).
    "byte-view": {"kvEvents": {"enabled": False}, "tokenizer": {"enabled": False}},
}


def render(values: dict[str, Any], release: str = "kvroute") -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs
