# One GPU node group per example, chosen by var.gpu; each entry is sized for the pods of one fleet in
# deploy/kubernetes/fleets/ (tests/deploy checks that the fleet's vLLM pod fits the instance's
# allocatable CPU and memory, and that the node label matches the fleet's nodeSelector).
locals {
  gpu_pools = {
    # 4 vCPU, 16 GiB, 1x T4 (16 GB): the seed's EKS fleet.
    t4 = { instance_types = ["g4dn.xlarge"], fleet = "deploy/kubernetes/fleets/t4-qwen2.5-1.5b" }
    # 4 vCPU, 16 GiB, 1x L4 (24 GB).
    l4 = { instance_types = ["g6.xlarge"], fleet = "deploy/kubernetes/fleets/l4-qwen2.5-1.5b" }
    # 16 vCPU, 256 GiB, 1x H100 (80 GB): the smallest H100 instance.
    h100 = { instance_types = ["p5.4xlarge"], fleet = "deploy/kubernetes/fleets/h100-llama-3.1-8b" }
  }
  gpu_pool = local.gpu_pools[var.gpu]
}
