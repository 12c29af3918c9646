"""Shared readers for the deployment artefacts (a plain module, not conftest.py: several test folders
have a conftest and `import conftest` would pick whichever was loaded first). Static checks only."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from kvroute.config import Settings, from_env, from_mapping

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "kvroute-dashboard.json"
# The oldest Kubernetes minor the manifests promise to work on (EKS and GKE both still offer it), and
# the newest schema the validator ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
# A fleet whose model is not the gateway ConfigMap's has its gateway overlay here, by the fleet's name.
FLEET_GATEWAYS = DEPLOY / "fleet-gateways"
TINY_TOKENIZER = DEPLOY / "local" / "sim-tokenizer"
SETTINGS_KEYS = frozenset(f.name for f in dataclasses.fields(Settings))


def unquote(text: str) -> str:
    """python-hcl2 keeps the quotes of HCL strings: "t4" -> t4."""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a (multi-document) YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Plain Kubernetes manifests; kustomization files are build instructions, not objects."""
    found = folder.rglob("*.yaml") if recursive else folder.glob("*.yaml")
    return sorted(p for p in found if p.name != "kustomization.yaml")


def objects(folder: Path, recursive: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, for one folder of manifests that are applied together."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in manifest_files(folder, recursive):
        for doc in yaml_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{path}: {key} defined twice"
            found[key] = doc
    return found


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from workload["spec"]["template"]["spec"]["containers"]


def makefile_pin(name: str) -> str:
    """A `NAME := value` line of the Makefile (VLLM_VERSION, TORCH_VERSION)."""
    found = re.search(rf"^{name} := (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert found, f"{name} not found in the Makefile"
    return found.group(1)


def gateway_folder(fleet: Path) -> Path:
    """The kustomization an operator applies for the gateway in front of `fleet` (docs/deployment.md step 4)."""
    own = FLEET_GATEWAYS / fleet.name
    return own if own.is_dir() else KUBE


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def flags(args: list[str]) -> dict[str, str | bool]:
    """--name=value and bare --name flags of a command line (vLLM's, the simulator's --name value pairs too)."""
    found: dict[str, str | bool] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg.partition("=")
        if eq:
            found[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            found[name] = args[i + 1]
        else:
            found[name] = True
    return found


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def effective_settings(configmap: dict[str, Any], container: dict[str, Any], key: str = "kvroute.yaml") -> Settings:
    """What `kvroute serve --config` in `container` starts with: the ConfigMap's YAML, then the
    container's literal KVROUTE_* variables (no validate(): the tokenizer directories are on a volume)."""
    loaded = yaml.safe_load(configmap["data"][key])
    return from_env(literal_env(container), from_mapping(loaded, configmap["metadata"]["name"]))


def with_tokenizers_at(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """kvroute.yaml's mapping with every tokenizer directory replaced by a local one: the tests' stand-in
    for the pod's tokenizer volume (validate() loads each directory)."""
    return {**config, "tokenizer": {model: str(directory) for model in config.get("tokenizer", {})}}


def runnable_configmap() -> str:
    """deploy/kubernetes's kvroute.yaml as a process on this machine can run it: the tokenizer
    directories (the pod's volume) point at a real tokenizer here."""
    text = objects(KUBE)["ConfigMap", "kvroute-config"]["data"]["kvroute.yaml"]
    return yaml.safe_dump(with_tokenizers_at(yaml.safe_load(text), TINY_TOKENIZER))


def mount_holding(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) under which `path` lies in this container; AssertionError if none."""
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            return mount, volume
    raise AssertionError(f"{path} is on no volume of container {container['name']}")


def env_var_settings_key(name: str) -> str | None:
    """KVROUTE_QUEUE_THRESHOLD_LOW -> queue_threshold_low; None for other variables."""
    return name[len("KVROUTE_"):].lower() if name.startswith("KVROUTE_") else None


PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "vector",
    "scalar", "abs", "ceil", "floor", "round", "clamp_min", "clamp_max", "label_replace", "label_join",
    "time", "timestamp", "absent", "changes", "resets", "sort", "sort_desc", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "last_over_time", "le",
}


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for nested in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in nested.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL (or Grafana label_values) expression reads."""
    expr = re.sub(r"\{[^}]*\}", "", expr)                    # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)                    # range selectors ($__rate_interval)
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", expr)  # Grafana's variable query function
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}
