"""What a pod can request on the GPU nodes the Terraform examples create: each instance's size from
the cloud's published tables, and the kubelet's reservations by the formulas EKS's node bootstrap and
GKE apply. Static facts, so that "the vLLM pod fits this node" is a test instead of a Pending pod."""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class NodeType:
    cloud: str  # eks | gke
    vcpus: int
    memory_gib: float  # as the cloud sells it
    gpus: int
    gpu: str  # the kvroute/gpu label value the examples give it
    max_pods: int = 110  # EKS: from the instance's ENIs (it sizes the kubelet's memory reservation)


# AWS: instance type pages (vCPUs, GiB, GPUs); max pods from the VPC CNI's ENI table. GCE: machine
# type tables (GCE's "GB" is GiB); accelerators attach to n1 (T4) or come with g2 (L4) and a3 (H100).
NODE_TYPES = {
    "g4dn.xlarge": NodeType("eks", 4, 16, 1, "t4", max_pods=29),
    "g6.xlarge": NodeType("eks", 4, 16, 1, "l4", max_pods=58),
    # AWS lists no ENI-derived figure for p5.4xlarge smaller than the bootstrap's cap; 110 reserves more.
    "p5.4xlarge": NodeType("eks", 16, 256, 1, "h100", max_pods=110),
    # The CPU pools' defaults (the gateway, monitoring, kube-system); gpu "" = no GPU label.
    "m6i.xlarge": NodeType("eks", 4, 16, 0, "", max_pods=58),
    "e2-standard-4": NodeType("gke", 4, 16, 0, ""),
    "n1-standard-4": NodeType("gke", 4, 15, 1, "t4"),
    "g2-standard-4": NodeType("gke", 4, 16, 1, "l4"),
    "a3-highgpu-1g": NodeType("gke", 26, 234, 1, "h100"),
}

# Memory the kernel and firmware keep before the kubelet sees any (about 4-6 % on these machines).
VISIBLE_MEMORY = 0.94
EVICTION_HARD_GIB = 100 / 1024
# What the DaemonSets of a GPU node request (CNI, kube-proxy, NVIDIA device plugin and DCGM exporter,
# the cloud's logging and metadata agents): generous, as a margin.
DAEMONSETS_CPU = 0.5
DAEMONSETS_MEMORY_GIB = 1.0


def _tiered(amount: float, tiers: list[tuple[float, float]]) -> float:
    """A reservation charged in bands: `share` of each band of `size`, in order, until `amount` is used."""
    left, reserved = amount, 0.0
    for size, share in tiers:
        part = min(left, size)
        reserved += part * share
        left -= part
    return reserved


# Both clouds: 6 % of the first core, 1 % of the second, 0.5 % of the next two, 0.25 % above four.
CPU_TIERS = [(1, 0.06), (1, 0.01), (2, 0.005), (float("inf"), 0.0025)]
# GKE: 25 % of the first 4 GiB, 20 % of the next 4, 10 % of the next 8, 6 % of the next 112, 2 % above.
GKE_MEMORY_TIERS = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02)]


def schedulable(node: NodeType) -> tuple[float, float]:
    """(CPU cores, GiB) left for workload pods after the kubelet's reservations and the DaemonSets."""
    memory = node.memory_gib * VISIBLE_MEMORY
    if node.cloud == "eks":
        reserved_memory = (11 * node.max_pods + 255) / 1024
    else:
        reserved_memory = _tiered(memory, GKE_MEMORY_TIERS)
    cpu = node.vcpus - _tiered(node.vcpus, CPU_TIERS) - DAEMONSETS_CPU
    return cpu, memory - reserved_memory - EVICTION_HARD_GIB - DAEMONSETS_MEMORY_GIB


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_gib(quantity: str | int) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()  # type: ignore[union-attr]
    scale = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": GIB, "Ti": 1024**4, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    return float(number) * scale[unit] / GIB


def pod_requests(pod: dict) -> tuple[float, float, int]:
    """(CPU, GiB, GPUs) the scheduler reserves: the larger of any init container and the containers' sum."""
    def requests(containers: list[dict]) -> list[tuple[float, float, int]]:
        found = []
        for container in containers:
            asked = container.get("resources", {}).get("requests", {})
            found.append((cpu_cores(asked.get("cpu", 0)), memory_gib(asked.get("memory", 0)),
                          int(asked.get("nvidia.com/gpu", 0))))
        return found
    running = requests(pod["containers"])
    total = tuple(sum(r[i] for r in running) for i in range(3))
    init = requests(pod.get("initContainers", []))
    return tuple(max([total[i]] + [r[i] for r in init]) for i in range(3))  # type: ignore[return-value]
