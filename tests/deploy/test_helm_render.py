"""deploy/helm/kvroute rendered and linted by Helm's own Go code (helm-python-sdk, offline: no cluster,
`lookup` returns nothing), for several values sets. Every render validates strictly against the
oldest and newest supported Kubernetes schemas, and its parts agree with each other, with kvroute's
Settings and with the vLLM manifests the chart's gateway is meant to reach."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from cluster_model import Cluster
from deploy_support import (
    K8S_VERSIONS, KUBE, TINY_TOKENIZER, containers, effective_settings, flags, mount_holding, named_ports, objects,
    pod_spec, with_tokenizers_at,
)
from helm_support import CHART, CRD_KINDS, NAMESPACE, VALUE_SETS, helm, render
from kvroute.config import from_mapping, validate

kubernetes_validate = pytest.importorskip("kubernetes_validate")


def _by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment


@pytest.fixture(scope="module", params=sorted(VALUE_SETS), ids=str)
def values_set(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VALUE_SETS[request.param])


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(name, version):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_render_matches_the_kubernetes_schema(values_set, version):
    _, docs = values_set
    assert docs
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_a_broken_template_fails_torender(tmp_path):
    # What the text checks could not see: a bad pipeline inside an otherwise balanced template.
    import shutil

    broken = tmp_path / "kvroute"
    shutil.copytree(CHART, broken)
    deployment = broken / "templates" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("| nindent 4 }}", "| nindent }}", 1))
    with helm.Chart.load(broken) as chart, pytest.raises(helm.HelmError):
        chart.render({}, name="kvroute", namespace=NAMESPACE)


def test_config_is_valid_settings_and_ports_agree(values_set):
    name, docs = values_set
    found = _by_key(docs)
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    # validate() loads each tokenizer directory: a real tokenizer stands in for the pod's volume.
    settings = validate(from_mapping(with_tokenizers_at(yaml.safe_load(configmap["data"]["kvroute.yaml"]),
                                                        TINY_TOKENIZER), f"helm {name}"))
    (container,) = containers(_gateway(docs))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port, "admin": settings.admin_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    pod = _gateway(docs)["spec"]["template"]["spec"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.grace_period
    for service in (d for d in docs if d["kind"] == "Service"):
        labels = _gateway(docs)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    if settings.discovery == "kubernetes":
        vllm = objects(KUBE / "vllm")["Service", "vllm"]
        assert settings.k8s_label_selector == f"kubernetes.io/service-name={vllm['metadata']['name']}"
        assert settings.k8s_port_name in {p["name"] for p in vllm["spec"]["ports"]}
        assert pod["automountServiceAccountToken"] is True
        (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
        assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
        role = found[binding["roleRef"]["kind"], binding["roleRef"]["name"]]
        assert any("endpointslices" in r["resources"] and {"list", "watch"} <= set(r["verbs"]) for r in role["rules"])
    else:
        assert pod["automountServiceAccountToken"] is False


def test_every_reference_resolves_in_the_release(values_set):
    name, docs = values_set
    cluster = Cluster()
    cluster.apply({"kind": "Namespace", "metadata": {"name": NAMESPACE}})
    given = VALUE_SETS[name]
    # What the operator brings: the guide's step-2 Secret, a pull secret, the default ServiceAccount.
    existing = given.get("adminToken", {}).get("existingSecret")
    if existing:
        cluster.apply({"kind": "Secret", "metadata": {"name": existing, "namespace": NAMESPACE},
                       "data": {"admin-token": "eA=="}})
    claim = given.get("tokenizer", {}).get("volume", {}).get("persistentVolumeClaim")
    if claim:  # the operator's volume of tokenizer files
        cluster.apply({"kind": "PersistentVolumeClaim", "metadata": {"name": claim["claimName"], "namespace": NAMESPACE}})
    for secret in given.get("imagePullSecrets", []):
        cluster.apply({"kind": "Secret", "metadata": {"name": secret["name"], "namespace": NAMESPACE}, "data": {}})
    for doc in docs:
        cluster.apply(doc, NAMESPACE)
    assert cluster.dangling_references() == []


def test_the_vllm_network_policy_admits_the_charts_gateway(values_set):
    _, docs = values_set
    labels = _gateway(docs)["spec"]["template"]["metadata"]["labels"]
    policy = objects(KUBE / "vllm")["NetworkPolicy", "vllm-from-router-only"]
    # On the API port and on both KV event ports, by a rule whose pod selector the chart's pods match.
    admitted = {p["port"] for rule in policy["spec"]["ingress"]
                if any("podSelector" in peer and peer["podSelector"]["matchLabels"].items() <= labels.items()
                       for peer in rule["from"])
                for p in rule["ports"]}
    assert {"http", "kv-events", "kv-replay"} <= admitted


def _vllm_server() -> dict[str, Any]:
    (server,) = containers(objects(KUBE / "vllm")["Deployment", "vllm"])
    return server


def test_the_exact_view_matches_the_vllm_manifests(values_set):
    """kv_events_port / kv_events_replay_port are the vLLM pods' kv-events / kv-replay ports (0 where
    the values turn them off), block_tokens their --block-size."""
    name, docs = values_set
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (container,) = containers(_gateway(docs))
    settings = effective_settings(configmap, container)
    server = _vllm_server()
    ports, given = named_ports(server), flags(server["args"])
    kv_events = {"enabled": True, "replayPort": ports["kv-replay"], **VALUE_SETS[name].get("kvEvents", {})}
    if kv_events["enabled"]:
        assert settings.kv_events_port == ports["kv-events"]
        assert settings.kv_events_replay_port == kv_events["replayPort"]
    else:
        assert settings.kv_events_port == settings.kv_events_replay_port == 0
    assert settings.block_tokens == int(given["--block-size"])


def test_the_tokenizer_is_a_read_only_volume_of_the_served_model(values_set):
    name, docs = values_set
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    pod = pod_spec(_gateway(docs))
    (container,) = pod["containers"]
    settings = effective_settings(configmap, container)
    tokenizer = VALUE_SETS[name].get("tokenizer", {})
    if tokenizer.get("enabled") is False:
        assert settings.tokenizer == {} and "initContainers" not in pod
        assert "tokenizers" not in {v["name"] for v in pod["volumes"]}
        return
    given = flags(_vllm_server()["args"])
    # The chart's default is the name the vLLM manifests serve; a values set may name an alias.
    served = tokenizer.get("model", given["--served-model-name"])
    assert list(settings.tokenizer) == [served]
    mount, volume = mount_holding(pod, container, settings.tokenizer[served])
    assert mount.get("readOnly") is True
    if "volume" in tokenizer:  # the operator's volume: no fetch
        assert "initContainers" not in pod and {k: v for k, v in volume.items() if k != "name"} == tokenizer["volume"]
        return
    assert "emptyDir" in volume
    (fetch,) = pod["initContainers"]
    assert fetch["image"] == container["image"] and fetch["command"][:3] == ["python", "-m", "kvroute.fetch_tokenizer"]
    init_mount, init_volume = mount_holding(pod, fetch, settings.tokenizer[served])
    assert init_volume is volume and init_mount["mountPath"] == mount["mountPath"]
    assert dict(effective_settings(configmap, fetch).tokenizer) == dict(settings.tokenizer)
    repo = flags(fetch["command"]).get("--repo")
    assert repo == (f"{served}={tokenizer['repository']}" if tokenizer.get("repository") else None)


def test_config_cannot_shadow_the_values_that_shape_the_pod():
    with pytest.raises(helm.HelmError, match="config.block_tokens"):
        render({"config": {"block_tokens": 32}})


def test_the_service_monitor_scrapes_the_admin_service():
    found = _by_key(render(VALUE_SETS["guide"]))
    monitor = found["ServiceMonitor", "kvroute"]
    admin = found["Service", "kvroute-admin"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in admin["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def _pod_annotations(values: dict[str, Any]) -> dict[str, str]:
    return _gateway(render(values))["spec"]["template"]["metadata"]["annotations"]


def test_configs_the_pods_read_once_roll_them():
    base = _pod_annotations(VALUE_SETS["guide"])
    # Deterministic: the same values give the same pod template (no roll on a no-op upgrade).
    assert _pod_annotations(VALUE_SETS["guide"]) == base
    tiers = _pod_annotations({**VALUE_SETS["guide"], "apiKeyTiers": {"sk-a": "high", "sk-b": "normal"}})
    assert tiers["checksum/secrets"] != base["checksum/secrets"]
    assert tiers["checksum/config"] == base["checksum/config"]
    policy = _pod_annotations({**VALUE_SETS["guide"], "policy": "least_load"})
    assert policy["checksum/config"] != base["checksum/config"]
    token = _pod_annotations({"adminToken": {"value": "one"}})
    assert token["checksum/secrets"] != _pod_annotations({"adminToken": {"value": "two"}})["checksum/secrets"]


def test_tiers_reach_the_pods_in_the_settings_format():
    import base64

    docs = render(VALUE_SETS["guide"])
    found = _by_key(docs)
    (container,) = containers(_gateway(docs))
    env = {e["name"]: e for e in container["env"]}
    ref = env["KVROUTE_API_KEY_TIERS"]["valueFrom"]["secretKeyRef"]
    raw = base64.b64decode(found["Secret", ref["name"]]["data"][ref["key"]]).decode()
    settings = validate(from_mapping({"api_key_tiers": raw}, "helm apiKeyTiers"))
    assert settings.api_key_tiers == {"sk-a": "high", "sk-b": "low"}
    # The admin token stays in the operator's Secret; the chart does not create one of the same name.
    assert env["KVROUTE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "kvroute-admin"
    assert ("Secret", "kvroute-admin") not in found


def test_the_charts_network_policy_covers_its_pods_and_names_their_ports(values_set):
    _, docs = values_set
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    template = _gateway(docs)["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    named = {p["name"] for p in container["ports"]}
    assert {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]} == named
