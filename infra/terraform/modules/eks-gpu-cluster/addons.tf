# In-cluster components the GPU node group needs, installed with the cluster (not a README command).
# The helm provider is configured by the root module (examples/eks) with this module's endpoint and CA.

# nvidia.com/gpu exists on a node only once the device plugin runs there. Not needed on Bottlerocket
# (built in), where it is left out.
resource "helm_release" "nvidia_device_plugin" {
  count      = var.gpu_ami_type == "BOTTLEROCKET_x86_64_NVIDIA" ? 0 : 1
  name       = "nvidia-device-plugin"
  repository = "https://nvidia.github.io/k8s-device-plugin"
  chart      = "nvidia-device-plugin"
  version    = var.nvidia_device_plugin_version
  namespace  = "kube-system"

  values = [yamlencode({
    nodeSelector = { "kvroute/pool" = "gpu" }
    # The GPU node group's taint (main.tf), or the plugin would never land on the nodes it serves.
    tolerations = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
  })]

  depends_on = [aws_eks_node_group.system]
}

# Scales both node groups, the GPU one from zero: managed node groups tag their Auto Scaling groups for
# auto-discovery, and eks:DescribeNodegroup gives the autoscaler their labels and taints while empty.
resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_chart_version
  namespace  = "kube-system"

  values = [yamlencode({
    cloudProvider = "aws"
    awsRegion     = data.aws_region.current.name
    autoDiscovery = { clusterName = aws_eks_cluster.this.name }
    rbac = {
      serviceAccount = {
        name        = "cluster-autoscaler"
        annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.cluster_autoscaler.arn }
      }
    }
    nodeSelector = { "kvroute/pool" = "system" }
    extraArgs = {
      # vLLM pods are slow to start; do not take a GPU node away while a rollout is settling.
      "scale-down-unneeded-time"    = "15m"
      "balance-similar-node-groups" = true
      "skip-nodes-with-system-pods" = false
    }
  })]

  depends_on = [aws_eks_node_group.system, aws_iam_role_policy.cluster_autoscaler]
}
