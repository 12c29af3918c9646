output "update_kubeconfig_command" {
  description = "Run this, install the NVIDIA device plugin (README), then apply deploy/kubernetes."
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
