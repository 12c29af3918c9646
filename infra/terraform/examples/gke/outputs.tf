output "get_credentials_command" {
  description = "Run this, then `kubectl apply -k deploy/kubernetes/vllm` and `kubectl apply -k deploy/kubernetes`."
  value       = module.cluster.get_credentials_command
}

output "gpu_node_pool" {
  description = "Name of the GPU node pool."
  value       = module.cluster.gpu_node_pool
}
