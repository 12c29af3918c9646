# An EKS cluster with a CPU node group (kvroute, monitoring, kube-system) and a GPU node group for vLLM
# on an EKS-optimised NVIDIA AMI (drivers and container toolkit preinstalled). addons.tf installs the
# NVIDIA device plugin and the Cluster Autoscaler; irsa.tf the OIDC provider they authenticate with.

resource "aws_eks_cluster" "this" {
  name     = var.cluster_name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn
  tags     = var.tags

  vpc_config {
    subnet_ids              = var.subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = var.endpoint_public_access
    public_access_cidrs     = var.public_access_cidrs
  }

  # Every control-plane log type goes to CloudWatch (/aws/eks/<cluster>/cluster).
  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  # Secrets (the admin token, API keys, the Hugging Face token) envelope-encrypted with a KMS key.
  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.secrets.arn
    }
  }

  # Access entries instead of the aws-auth ConfigMap; whoever applies this becomes cluster admin.
  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  depends_on = [aws_iam_role_policy_attachment.cluster, aws_cloudwatch_log_group.cluster]
}

# Created before the cluster so that retention applies from the first log line (EKS would create it
# with no expiry).
resource "aws_cloudwatch_log_group" "cluster" {
  name              = "/aws/eks/${var.cluster_name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.secrets.arn
  tags              = var.tags
}

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "system"
  node_role_arn   = aws_iam_role.nodes.arn
  subnet_ids      = var.subnet_ids
  ami_type        = "AL2023_x86_64_STANDARD"
  instance_types  = var.system_instance_types
  labels          = { "kvroute/pool" = "system" }
  tags            = var.tags

  scaling_config {
    min_size     = var.system_min_nodes
    desired_size = var.system_min_nodes
    max_size     = var.system_max_nodes
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.nodes]
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "gpu"
  node_role_arn   = aws_iam_role.nodes.arn
  subnet_ids      = var.subnet_ids
  ami_type        = var.gpu_ami_type
  capacity_type   = var.gpu_capacity_type
  instance_types  = var.gpu_instance_types
  disk_size       = var.gpu_disk_size_gb
  labels          = { "kvroute/pool" = "gpu", "kvroute/gpu" = var.gpu_label }
  tags            = var.tags

  scaling_config {
    min_size     = var.gpu_min_nodes
    desired_size = var.gpu_desired_nodes
    max_size     = var.gpu_max_nodes
  }

  # Keeps CPU-only pods off expensive GPU nodes; the vLLM example tolerates this taint (the same key
  # GKE uses, so one manifest serves both clouds).
  taint {
    key    = "nvidia.com/gpu"
    value  = "present"
    effect = "NO_SCHEDULE"
  }

  # Replace GPU nodes one at a time so the vLLM fleet never loses more than one server to an upgrade.
  update_config {
    max_unavailable = 1
  }

  lifecycle {
    # The cluster autoscaler (or Karpenter) owns the node count after creation.
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.nodes]
}

data "aws_region" "current" {}
