output "cluster_name" {
  description = "EKS cluster name."
  value       = aws_eks_cluster.this.name
}

output "endpoint" {
  description = "Kubernetes API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "ca_certificate" {
  description = "Base64 CA certificate of the API endpoint."
  value       = aws_eks_cluster.this.certificate_authority[0].data
  sensitive   = true
}

output "oidc_issuer" {
  description = "OIDC issuer URL, for IAM roles for service accounts."
  value       = aws_eks_cluster.this.identity[0].oidc[0].issuer
}

output "node_role_arn" {
  description = "IAM role of both node groups."
  value       = aws_iam_role.nodes.arn
}

output "gpu_node_group" {
  description = "Name of the GPU node group."
  value       = aws_eks_node_group.gpu.node_group_name
}

output "update_kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster (region from the provider's configuration)."
  value       = "aws eks update-kubeconfig --name ${aws_eks_cluster.this.name} --region ${data.aws_region.current.name}"
}

output "oidc_provider_arn" {
  description = "IAM OIDC provider of the cluster, for further IAM roles for service accounts."
  value       = aws_iam_openid_connect_provider.cluster.arn
}
