output "update_kubeconfig_command" {
  description = "Run this, then follow docs/deployment.md section 2 (the module installed the NVIDIA device plugin)."
  value       = module.cluster.update_kubeconfig_command
}

output "gpu_node_group" {
  description = "Name of the GPU node group."
  value       = module.cluster.gpu_node_group
}

output "vpc_id" {
  description = "The new VPC."
  value       = module.vpc.vpc_id
}

output "vllm_fleet" {
  description = "The vLLM overlay sized for this node pool: kubectl apply -k <this> (docs/deployment.md, step 3)."
  value       = local.gpu_pool.fleet
}
