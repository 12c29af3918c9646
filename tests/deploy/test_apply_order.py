"""docs/deployment.md and deploy/local/README.md, followed step by step: every documented `kubectl`
line is replayed in order against an in-memory API server (cluster_model.py) fed the rendered
manifests. A step that needs an object no earlier step created fails here, as does a pod that would
not start for a missing Secret, ConfigMap or ServiceAccount."""

from __future__ import annotations

import shutil

import pytest

from cluster_model import Cluster, StepFailed, run_kubectl, shell_commands
from deploy_support import DEPLOY, ROOT

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl (its built-in kustomize renders the manifests) not installed")

GUIDE = ROOT / "docs" / "deployment.md"
GUIDE_SECTION = "## 2. Deploy on Kubernetes"


def _replay(commands: list[str]) -> Cluster:
    cluster = Cluster()
    for line in commands:
        if line.startswith("kubectl "):
            run_kubectl(cluster, line, ROOT)
    return cluster


def test_the_guide_has_a_kubectl_step_for_every_stage():
    commands = shell_commands(GUIDE.read_text(), GUIDE_SECTION, "### Or with Helm")
    applied = [c for c in commands if c.startswith("kubectl apply")]
    # namespace, vLLM fleet, router: in that order.
    assert [c.split()[-1] for c in applied] == [
        "deploy/kubernetes/namespace.yaml", "deploy/kubernetes/fleets/l4-qwen2.5-1.5b", "deploy/kubernetes"]


def test_following_the_guide_finds_no_missing_object():
    cluster = _replay(shell_commands(GUIDE.read_text(), GUIDE_SECTION, "### Or with Helm"))
    assert cluster.has("Deployment", "kvroute", "vllm") and cluster.has("Deployment", "kvroute", "kvroute")
    assert cluster.dangling_references() == []


def test_following_the_local_walkthrough_finds_no_missing_object():
    readme = (DEPLOY / "local" / "README.md").read_text()
    # The Grafana part installs a third-party chart the replay does not model.
    commands = (shell_commands(readme, "## kind") + shell_commands(readme, "## Try it")
                + shell_commands(readme, "## Watch routing", "### Grafana"))
    assert any("scale deploy/vllm" in c for c in commands)
    cluster = _replay(commands)
    assert cluster.dangling_references() == []


def test_the_replay_refuses_the_order_the_guide_used_to_give():
    # The old guide applied the vLLM manifests before creating the namespace; the real API server
    # refuses that, and so must the model, or the tests above prove nothing.
    with pytest.raises(StepFailed, match='namespaces "kvroute" not found'):
        _replay(["kubectl apply -k deploy/kubernetes/vllm"])


def test_the_replay_sees_a_missing_secret():
    cluster = _replay(["kubectl apply -k deploy/kubernetes"])  # namespace included, Secret not created
    assert "Deployment/kvroute needs Secret/kvroute-admin" in cluster.dangling_references()


def test_the_h100_fleet_with_its_gateway_finds_no_missing_object():
    # The guide's step 4 alternative for the Llama fleet (its comment names the overlay).
    guide = GUIDE.read_text()
    assert "deploy/fleet-gateways/h100-llama-3.1-8b" in guide
    cluster = _replay(["kubectl apply -f deploy/kubernetes/namespace.yaml",
                       "kubectl -n kvroute create secret generic kvroute-admin --from-literal=admin-token=x",
                       "kubectl apply -k deploy/kubernetes/fleets/h100-llama-3.1-8b",
                       "kubectl apply -k deploy/fleet-gateways/h100-llama-3.1-8b",
                       "kubectl -n kvroute logs deploy/kvroute -c fetch-tokenizer"])
    assert cluster.dangling_references() == []
