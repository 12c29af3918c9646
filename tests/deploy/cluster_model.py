"""An in-memory stand-in for the API server, just strict enough to replay an operator's `kubectl`
commands from a document: a namespaced object is refused while its namespace does not exist (as the
real API server does), and what pods would need at start (Secrets, ConfigMaps, ServiceAccounts,
Roles) is checked once every step ran. Objects come from the same manifests `kubectl apply` sends,
rendered by `kubectl kustomize` (offline), so no cluster is needed."""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

# Kinds the real API server keeps outside namespaces (only those the manifests here use).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


class StepFailed(AssertionError):
    pass


@dataclass
class Cluster:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, ns, name)

    def has(self, kind: str, namespace: str, name: str) -> bool:
        return (kind, "" if kind in CLUSTER_SCOPED else namespace, name) in self.objects

    def apply(self, obj: dict[str, Any], default_namespace: str = "default") -> None:
        kind, meta = obj["kind"], obj["metadata"]
        namespace = "" if kind in CLUSTER_SCOPED else meta.get("namespace", default_namespace)
        if namespace and not self.has("Namespace", "", namespace):
            raise StepFailed(f'{kind}/{meta["name"]}: namespaces "{namespace}" not found')
        self.objects[kind, namespace, meta["name"]] = obj

    def dangling_references(self) -> list[str]:
        """What a pod, a RoleBinding or a Service would find missing once everything was applied."""
        missing = []
        for (kind, namespace, name), obj in self.objects.items():
            for ref_kind, ref_name, key in _references(obj):
                where = f"{kind}/{name} needs {ref_kind}/{ref_name}"
                if ref_kind == "ServiceAccount" and ref_name == "default":
                    continue  # every namespace has one
                found = self.objects.get((ref_kind, namespace, ref_name))
                if found is None:
                    missing.append(where)
                elif key is not None and key not in {**found.get("data", {}), **found.get("stringData", {})}:
                    missing.append(f"{where} key {key}")
        return missing


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in POD_OWNERS:
        return obj["spec"]["template"]["spec"]
    return obj["spec"] if obj["kind"] == "Pod" else None


def _references(obj: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every object this one cannot work without; optional ones skipped."""
    pod = _pod_spec(obj)
    if pod is not None:
        yield "ServiceAccount", pod.get("serviceAccountName", "default"), None
        for secret in pod.get("imagePullSecrets", []):
            yield "Secret", secret["name"], None
        for volume in pod.get("volumes", []):
            if "secret" in volume and not volume["secret"].get("optional"):
                yield "Secret", volume["secret"]["secretName"], None
            if "configMap" in volume and not volume["configMap"].get("optional"):
                yield "ConfigMap", volume["configMap"]["name"], None
            if "persistentVolumeClaim" in volume:
                yield "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], None
        for container in pod.get("initContainers", []) + pod["containers"]:
            for env in container.get("env", []):
                source = env.get("valueFrom", {})
                for ref_kind, ref_key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    ref = source.get(ref_key)
                    if ref and not ref.get("optional"):
                        yield ref_kind, ref["name"], ref["key"]
            for env_from in container.get("envFrom", []):
                for ref_kind, ref_key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    ref = env_from.get(ref_key)
                    if ref and not ref.get("optional"):
                        yield ref_kind, ref["name"], None
    if obj["kind"] == "RoleBinding":
        yield obj["roleRef"]["kind"], obj["roleRef"]["name"], None
        for subject in obj["subjects"]:
            if subject["kind"] == "ServiceAccount":
                yield "ServiceAccount", subject["name"], None


def shell_commands(markdown: str, start: str, stop: str | None = None) -> list[str]:
    """The command lines of the ```sh blocks between the heading `start` and the heading `stop` (or
    the next heading of the same level), continuations joined, comments and `&` dropped."""
    level = start.split(" ", 1)[0]
    section = markdown.split(start, 1)[1]
    ends = [i for i in (section.find(stop) if stop else -1, section.find(f"\n{level} ")) if i >= 0]
    section = section[:min(ends)] if ends else section
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip().rstrip("&").strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def rendered(path: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k` (a folder) or `kubectl apply -f` (a file) would send."""
    if path.is_dir():
        text = subprocess.run(["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True,
                              timeout=60).stdout
    else:
        text = path.read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _resource(cluster: Cluster, namespace: str, ref: str) -> None:
    aliases = {"deploy": "Deployment", "deployment": "Deployment", "svc": "Service", "service": "Service",
               "secret": "Secret", "namespace": "Namespace", "ns": "Namespace", "endpoints": "Service",
               "configmap": "ConfigMap", "pod": "Pod"}
    kind, _, name = ref.partition("/")
    if not cluster.has(aliases[kind], namespace, name):
        raise StepFailed(f"{ref} does not exist in namespace {namespace}")


def run_kubectl(cluster: Cluster, line: str, root: Path) -> None:
    """Apply one documented `kubectl` line to the model; an unknown form fails (the test must learn
    it rather than let the documented step go unchecked)."""
    words = shlex.split(line)
    assert words[0] == "kubectl", line
    namespace, rest = "default", []
    iterator = iter(words[1:])
    for word in iterator:
        if word in ("-n", "--namespace"):
            namespace = next(iterator)
        elif not word.startswith("--"):
            rest.append(word)
    verb = rest[0]
    if verb == "apply" and rest[1] in ("-f", "-k"):
        for obj in rendered(root / rest[2]):
            cluster.apply(obj, namespace)
    elif verb == "create" and rest[1] == "namespace":
        cluster.apply({"kind": "Namespace", "metadata": {"name": rest[2]}})
    elif verb == "create" and rest[1:3] == ["secret", "generic"]:
        data = dict(w.split("=", 2)[1:] for w in words if w.startswith("--from-literal="))
        cluster.apply({"kind": "Secret", "metadata": {"name": rest[3], "namespace": namespace}, "data": data})
    elif verb == "rollout" and rest[1] == "status":
        _resource(cluster, namespace, rest[2])
    elif verb == "port-forward":
        _resource(cluster, namespace, rest[1])
    elif verb == "get" and rest[1] == "endpointslices":
        service = rest[rest.index("-l") + 1].removeprefix("kubernetes.io/service-name=")
        _resource(cluster, namespace, f"svc/{service}")
    elif verb == "get" and len(rest) == 3:
        _resource(cluster, namespace, f"{rest[1]}/{rest[2]}")
    elif verb == "scale":
        _resource(cluster, namespace, rest[1])
    elif verb == "logs":
        _resource(cluster, namespace, rest[1])
        if "-c" in rest:  # the named container (or init container) must be in the pod template
            kind, _, name = rest[1].partition("/")
            pod = _pod_spec(cluster.objects["Deployment", namespace, name])
            assert pod is not None
            names = {c["name"] for c in pod.get("initContainers", []) + pod["containers"]}
            if rest[rest.index("-c") + 1] not in names:
                raise StepFailed(f"{rest[1]} has no container {rest[rest.index('-c') + 1]}")
    else:
        raise StepFailed(f"the replay does not know this command: {line}")
