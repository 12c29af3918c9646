# One GPU node pool per example, chosen by var.gpu; each entry is sized for the pods of one fleet in
# deploy/kubernetes/fleets/ (tests/deploy checks that the fleet's vLLM pod fits the instance's
# allocatable CPU and memory, and that the node label matches the fleet's nodeSelector).
locals {
  gpu_pools = {
    # 4 vCPU, 15 GB, 1x T4 (16 GB).
    t4 = { machine_type = "n1-standard-4", gpu_type = "nvidia-tesla-t4", fleet = "deploy/kubernetes/fleets/t4-qwen2.5-1.5b" }
    # 4 vCPU, 16 GB, 1x L4 (24 GB).
    l4 = { machine_type = "g2-standard-4", gpu_type = "nvidia-l4", fleet = "deploy/kubernetes/fleets/l4-qwen2.5-1.5b" }
    # 26 vCPU, 234 GB, 1x H100 (80 GB): the smallest A3 machine.
    h100 = { machine_type = "a3-highgpu-1g", gpu_type = "nvidia-h100-80gb", fleet = "deploy/kubernetes/fleets/h100-llama-3.1-8b" }
  }
  gpu_pool = local.gpu_pools[var.gpu]
}
