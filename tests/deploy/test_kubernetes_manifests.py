"""deploy/kubernetes: the gateway's manifests and the vLLM backend example agree with each other, with
Kubernetes' own schemas and with kvroute's Settings."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from cluster_model import rendered
from deploy_support import (
    DEPLOY, FLEET_GATEWAYS, K8S_VERSIONS, KUBE, SETTINGS_KEYS, TINY_TOKENIZER, containers, effective_settings,
    env_var_settings_key, makefile_pin, manifest_files, mount_holding, named_ports, objects, pod_spec, with_tokenizers_at,
    yaml_documents,
)
from kvroute.config import from_mapping, validate

ALL_MANIFESTS = manifest_files(DEPLOY / "kubernetes") + manifest_files(DEPLOY / "local")


@pytest.fixture(scope="module")
def gateway() -> dict[tuple[str, str], dict[str, Any]]:
    return objects(KUBE)


@pytest.fixture(scope="module")
def backends() -> dict[tuple[str, str], dict[str, Any]]:
    return objects(KUBE / "vllm")


@pytest.fixture(scope="module")
def config(gateway: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    loaded = yaml.safe_load(gateway["ConfigMap", "kvroute-config"]["data"]["kvroute.yaml"])
    assert isinstance(loaded, dict)
    return loaded


def _gateway_container(gateway: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (container,) = containers(gateway["Deployment", "kvroute"])
    return container


@pytest.mark.parametrize("path", ALL_MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_parses_with_identity(path):
    docs = yaml_documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), path


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", ALL_MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_matches_kubernetes_schema(path, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in yaml_documents(path):
        # strict: an unknown field (a typo such as `readinesProbe`) is an error, not silently dropped.
        kubernetes_validate.validate(doc, version, strict=True)


def test_configmap_keys_are_settings(config, backends):
    # validate: the checks that span keys (e.g. poll_timeout <= poll_interval), as `kvroute serve` runs
    # them; it loads every tokenizer directory, here a real tokenizer in place of the pod's volume.
    settings = validate(from_mapping(with_tokenizers_at(config, TINY_TOKENIZER), "deploy/kubernetes/configmap.yaml"))
    (server,) = containers(backends["Deployment", "vllm"])
    ports = named_ports(server)
    assert (settings.kv_events_port, settings.kv_events_replay_port) == (ports["kv-events"], ports["kv-replay"])
    assert settings.tokenizer and all(d == str(TINY_TOKENIZER) for d in settings.tokenizer.values())
    # Secrets and per-pod facts come from the environment, never from a ConfigMap.
    assert "admin_token" not in config
    assert "k8s_namespace" not in config
    assert settings.discovery == "kubernetes"


def test_discovery_finds_the_vllm_service(config, backends):
    service = backends["Service", "vllm"]
    # The EndpointSlice controller labels every slice with its Service's name; that is the selector.
    assert config["k8s_label_selector"] == f"kubernetes.io/service-name={service['metadata']['name']}"
    assert config["k8s_port_name"] in {port["name"] for port in service["spec"]["ports"]}
    # The commented-out dns alternative must name the same Service and port.
    text = (KUBE / "configmap.yaml").read_text()
    assert f"dns_name: {service['metadata']['name']}.kvroute.svc.cluster.local" in text
    assert f"dns_port: {service['spec']['ports'][0]['port']}" in text


def test_gateway_ports_and_probes(gateway, config):
    settings = from_mapping(config, "configmap")
    container = _gateway_container(gateway)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": settings.port, "admin": settings.admin_port}
    # Liveness is the process, readiness is "can route": both live on the main port.
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["args"][:3] == ["serve", "--config", "/etc/kvroute/kvroute.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == "/etc/kvroute"


def test_termination_grace_covers_the_drain(gateway, config):
    settings = from_mapping(config, "configmap")
    pod = gateway["Deployment", "kvroute"]["spec"]["template"]["spec"]
    pre_stop = _gateway_container(gateway)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # SIGKILL must not arrive before the drain (grace_period) that starts after the preStop sleep ends.
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + settings.grace_period


def test_admin_token_comes_from_a_secret(gateway):
    env = {item["name"]: item for item in _gateway_container(gateway)["env"]}
    ref = env["KVROUTE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "kvroute-admin", "key": "admin-token"}
    assert env["KVROUTE_K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_off_loopback_admin_has_a_token(gateway, config):
    is_loopback = pytest.importorskip("kvroute.admin.server").is_loopback
    settings = from_mapping(config, "configmap")
    env = {item["name"] for item in _gateway_container(gateway)["env"]}
    # kvroute refuses to start an off-loopback admin API without a token.
    assert is_loopback(settings.admin_host) or "KVROUTE_ADMIN_TOKEN" in env


def test_kvroute_env_vars_are_settings_keys(gateway):
    for item in _gateway_container(gateway)["env"]:
        key = env_var_settings_key(item["name"])
        assert key is None or key in SETTINGS_KEYS, f"{item['name']} names no Settings field"


def test_rbac_lets_the_service_account_watch_endpointslices(gateway):
    pod = gateway["Deployment", "kvroute"]["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert ("ServiceAccount", account) in gateway
    binding = gateway["RoleBinding", "kvroute-discovery"]
    assert {"kind": "ServiceAccount", "name": account} == {
        k: v for k, v in binding["subjects"][0].items() if k in ("kind", "name")}
    role = gateway[binding["roleRef"]["kind"], binding["roleRef"]["name"]]
    granted = [r for r in role["rules"]
               if "discovery.k8s.io" in r["apiGroups"] and "endpointslices" in r["resources"]]
    assert granted and {"get", "list", "watch"} <= set(granted[0]["verbs"])


def _local_overlay() -> dict[tuple[str, str], dict[str, Any]]:
    # The overlay holds no manifests of its own any more: it patches the production ones.
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (for its built-in kustomize) not installed")
    return {(d["kind"], d["metadata"]["name"]): d for d in rendered(DEPLOY / "local")}


@pytest.mark.parametrize("folder", [KUBE, KUBE / "vllm", DEPLOY / "local"], ids=lambda p: p.name)
def test_services_select_pods_and_named_ports(folder):
    found = _local_overlay() if folder.name == "local" else objects(folder)
    workloads = [doc for (kind, _), doc in found.items() if kind == "Deployment"]
    for (kind, name), service in found.items():
        if kind != "Service":
            continue
        selector = service["spec"]["selector"]
        matches = [w for w in workloads
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert matches, f"Service {name} selects no pod in {folder.name}"
        port_names = {p["name"] for w in matches for c in containers(w) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: no container port {port['targetPort']}"


def test_deployment_selectors_match_their_templates():
    for path in ALL_MANIFESTS:
        for doc in yaml_documents(path):
            if doc["kind"] == "Deployment":
                labels = doc["spec"]["template"]["metadata"]["labels"]
                assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), path


def test_vllm_example_is_a_gpu_prefix_caching_backend(backends):
    service = backends["Service", "vllm"]
    # Headless: the gateway, not kube-proxy, picks the pod.
    assert service["spec"]["clusterIP"] == "None"
    (container,) = containers(backends["Deployment", "vllm"])
    assert "--enable-prefix-caching" in container["args"]
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    port = service["spec"]["ports"][0]
    assert f"--port={port['port']}" in container["args"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its built-in kustomize) not installed")
@pytest.mark.parametrize("folder", [KUBE, KUBE / "vllm"], ids=lambda p: p.name)
def test_kustomize_build_puts_everything_in_one_namespace(folder):
    # `kubectl kustomize` renders locally: no cluster, no network.
    out = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    namespace = yaml.safe_load((folder / "kustomization.yaml").read_text())["namespace"]
    rendered = [doc for doc in yaml.safe_load_all(out) if doc]
    assert len(rendered) == sum(len(yaml_documents(p)) for p in manifest_files(folder, recursive=False))
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
        for subject in doc.get("subjects", []):
            assert subject["namespace"] == namespace


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its built-in kustomize) not installed")
def test_local_overlay_builds_with_sim_backends_and_the_dev_image():
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "local")], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    gateway = rendered["Deployment", "kvroute"]
    (container,) = containers(gateway)
    assert container["image"] == "kvroute:dev" and gateway["spec"]["replicas"] == 1
    # The generated Secret gets a hash suffix; the Deployment must point at that name.
    secret_ref = {e["name"]: e for e in container["env"]}["KVROUTE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ("Secret", secret_ref["name"]) in rendered
    assert ("Service", "vllm") in rendered and ("Deployment", "vllm") in rendered


def test_local_sim_backends_run_the_simulator_cli():
    sim_cli = pytest.importorskip("kvroute.sim.cli")
    local = _local_overlay()
    (container,) = containers(local["Deployment", "vllm"])
    assert container["args"][0] == "sim"
    args = sim_cli.build_parser().parse_args(container["args"][1:])
    ports = named_ports(container)
    assert (args.host, args.base_port, args.instances) == ("0.0.0.0", ports["http"], 1)
    # One instance per pod: it publishes on exactly the kv-events / kv-replay ports the Service names
    # and the gateway subscribes to, in blocks of the gateway's size.
    assert (args.kv_events_port, args.kv_events_replay_port) == (ports["kv-events"], ports["kv-replay"])
    (gateway,) = containers(local["Deployment", "kvroute"])
    configmap = [d for (kind, _), d in local.items() if kind == "ConfigMap" and d["metadata"]["name"] == "kvroute-config"]
    settings = effective_settings(configmap[0], gateway)
    assert (settings.kv_events_port, settings.kv_events_replay_port) == (ports["kv-events"], ports["kv-replay"])
    assert settings.block_tokens == args.block_size
    # Both load the overlay's tokenizer ConfigMap, each from a read-only mount of it; the gateway keys
    # it by the model the simulator serves.
    assert list(settings.tokenizer) == ["sim-model"] and args.model in (None, ["sim-model"])
    volumes = []
    for workload, path, holder in ((local["Deployment", "vllm"], args.tokenizer, container),
                                   (local["Deployment", "kvroute"], settings.tokenizer["sim-model"], gateway)):
        mount, volume = mount_holding(pod_spec(workload), holder, path)
        assert mount.get("readOnly") is True and "configMap" in volume
        volumes.append(volume["configMap"]["name"])
    assert len(set(volumes)) == 1 and ("ConfigMap", volumes[0]) in local
    assert "initContainers" not in pod_spec(local["Deployment", "kvroute"])  # no Hub fetch on a laptop


def test_local_tokenizer_is_the_tiny_test_model(tmp_path):
    # deploy/local/sim-tokenizer is committed output of tests/tiny_chatml.py; rebuilt, it is identical.
    import sys

    sys.path.insert(0, str(DEPLOY.parent / "tests"))
    import tiny_chatml

    tiny_chatml.build(tmp_path)
    assert sorted(p.name for p in TINY_TOKENIZER.iterdir()) == sorted(p.name for p in tmp_path.iterdir())
    for built in tmp_path.iterdir():
        assert (TINY_TOKENIZER / built.name).read_bytes() == built.read_bytes(), built.name


GATEWAY_FOLDERS = [KUBE, DEPLOY / "local", *sorted(FLEET_GATEWAYS.iterdir())]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its built-in kustomize) not installed")
@pytest.mark.parametrize("folder", GATEWAY_FOLDERS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_gateway_starts_with_its_effective_settings(folder):
    """ConfigMap then the container's KVROUTE_* variables, through kvroute's own loader and validate(),
    the tokenizer directories standing in for the pod's volume."""
    found = {(d["kind"], d["metadata"]["name"]): d for d in rendered(folder)}
    configmap = next(d for (kind, name), d in found.items() if kind == "ConfigMap" and name.startswith("kvroute-config"))
    (container,) = containers(found["Deployment", "kvroute"])
    settings = effective_settings(configmap, container)
    validate(from_mapping(with_tokenizers_at(dataclasses.asdict(settings), TINY_TOKENIZER), str(folder)))
    assert settings.kv_events_port and settings.kv_events_replay_port and settings.tokenizer


def test_vllm_example_runs_the_version_the_real_vllm_tests_pin(backends):
    # The Makefile's VLLM_VERSION is the vLLM whose /metrics page the parser is tested against.
    (container,) = containers(backends["Deployment", "vllm"])
    assert container["image"] == f"vllm/vllm-openai:v{makefile_pin('VLLM_VERSION')}"


def test_discovery_reads_the_slices_the_vllm_service_gets(config, backends):
    """The EndpointSlice the Kubernetes controller writes for the example Service (labels, named port
    resolved to the container port, endpoint conditions), fed through the control plane's own parser
    with the ConfigMap's settings."""
    from kvroute.control.discovery import targets_from_slices

    settings = from_mapping(config, "configmap")
    service = backends["Service", "vllm"]
    (container,) = containers(backends["Deployment", "vllm"])
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    slice_ = {
        "metadata": {"name": "vllm-abcde", "labels": {"kubernetes.io/service-name": service["metadata"]["name"],
                                                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": p["name"], "port": container_ports[p["targetPort"]], "protocol": "TCP"}
                  for p in service["spec"]["ports"]],
        "endpoints": [
            {"addresses": ["10.8.0.11"], "conditions": {"ready": True, "serving": True, "terminating": False}},
            {"addresses": ["10.8.0.12"], "conditions": {"ready": False, "serving": True, "terminating": True}},
            {"addresses": ["10.8.0.13"], "conditions": {"ready": False, "serving": False, "terminating": False}},
        ],
    }
    # The API server applies the selector; it is a plain equality selector on the slice's labels.
    key, _, value = settings.k8s_label_selector.partition("=")
    assert slice_["metadata"]["labels"].get(key) == value
    targets = targets_from_slices([slice_], settings.k8s_port_name, settings.dns_port)
    by_url = {t.url: t.draining for t in targets.values()}
    # Ready serves, terminating-but-serving drains, not-ready (still loading the model) is left out.
    assert by_url == {"http://10.8.0.11:8000": False, "http://10.8.0.12:8000": True}


KUSTOMIZATIONS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its built-in kustomize) not installed")
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_kustomize_output_matches_the_kubernetes_schema(folder, version):
    # The rendered output, not the files: patches (the GPU fleets) and generators (the local Secret)
    # produce objects that no single file holds.
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = rendered(folder)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
