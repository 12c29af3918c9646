variable "cluster_name" {
  description = "EKS cluster name."
  type        = string
  default     = "kvroute"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version (the manifests in deploy/ need 1.30 or newer)."
  type        = string
  default     = "1.32"
}

variable "subnet_ids" {
  description = "Private subnets (at least two AZs) for the control plane's ENIs and the nodes."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "EKS needs subnets in at least two availability zones."
  }
}

variable "endpoint_public_access" {
  description = "Expose the Kubernetes API endpoint publicly (restricted to public_access_cidrs)."
  type        = bool
  default     = true
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint (your office, VPN or CI); required, so that it is never 0.0.0.0/0 by default."
  type        = list(string)
}

variable "system_instance_types" {
  description = "Instance types of the CPU node group (kvroute, monitoring, kube-system). 4 vCPU: a gateway pod requests 1 and the add-ons and Prometheus need the rest (m6i.large's 2 left 0.4 after one gateway)."
  type        = list(string)
  default     = ["m6i.xlarge"]
}

variable "system_min_nodes" {
  description = "Minimum CPU nodes."
  type        = number
  default     = 2
}

variable "system_max_nodes" {
  description = "Maximum CPU nodes."
  type        = number
  default     = 4
}

variable "gpu_instance_types" {
  description = "GPU instance types (g6.xlarge: 1x L4; g5.xlarge: 1x A10G; p4d.24xlarge: 8x A100)."
  type        = list(string)
  default     = ["g6.xlarge"]
}

variable "gpu_ami_type" {
  description = "EKS-optimised AMI with NVIDIA drivers: AL2023_x86_64_NVIDIA (add the device plugin) or BOTTLEROCKET_x86_64_NVIDIA (device plugin built in)."
  type        = string
  default     = "AL2023_x86_64_NVIDIA"

  validation {
    condition     = contains(["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA", "AL2_x86_64_GPU"], var.gpu_ami_type)
    error_message = "gpu_ami_type must be an NVIDIA-enabled EKS AMI type."
  }
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU node group."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "gpu_min_nodes" {
  description = "Minimum GPU nodes (0 lets an idle fleet cost nothing, with a cluster autoscaler or Karpenter)."
  type        = number
  default     = 0
}

variable "gpu_desired_nodes" {
  description = "GPU nodes at creation; the autoscaler owns the number afterwards."
  type        = number
  default     = 2
}

variable "gpu_max_nodes" {
  description = "Maximum GPU nodes."
  type        = number
  default     = 4
}

variable "gpu_disk_size_gb" {
  description = "Root volume per GPU node: the vLLM image and model weights land here."
  type        = number
  default     = 200
}

variable "tags" {
  description = "Tags on every AWS resource the module creates."
  type        = map(string)
  default     = {}
}

variable "gpu_label" {
  description = "Value of the kvroute/gpu label on GPU nodes (t4, l4, h100): the nodeSelector of the fleets in deploy/kubernetes/fleets/."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.gpu_label))
    error_message = "gpu_label must be a valid Kubernetes label value in lower case."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the control-plane logs."
  type        = number
  default     = 365
}

variable "nvidia_device_plugin_version" {
  description = "Version of NVIDIA's nvidia-device-plugin Helm chart (not installed on Bottlerocket, which has it built in)."
  type        = string
  default     = "0.17.1"
}

variable "cluster_autoscaler_chart_version" {
  description = "Version of the cluster-autoscaler Helm chart; its app version should match kubernetes_version's minor."
  type        = string
  default     = "9.46.6"
}
