output "get_credentials_command" {
  description = "Run this, then follow docs/deployment.md section 2 (the vllm_fleet output names step 3's overlay)."
  value       = module.cluster.get_credentials_command
}

output "gpu_node_pool" {
  description = "Name of the GPU node pool."
  value       = module.cluster.gpu_node_pool
}

output "vllm_fleet" {
  description = "The vLLM overlay sized for this node pool: kubectl apply -k <this> (docs/deployment.md, step 3)."
  value       = local.gpu_pool.fleet
}
