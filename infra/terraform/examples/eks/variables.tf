variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "cluster_name" {
  description = "EKS cluster (and VPC) name."
  type        = string
  default     = "kvroute"
}

variable "vpc_cidr" {
  description = "CIDR of the new VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the Kubernetes API (your office, VPN or CI); no default, so that nobody opens it to 0.0.0.0/0 by accident."
  type        = list(string)
}

variable "gpu_max_nodes" {
  description = "Upper bound of the GPU node group."
  type        = number
  default     = 4
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = { app = "kvroute" }
}

variable "gpu" {
  description = "GPU of the node pool, and so which fleet of deploy/kubernetes/fleets/ it runs: t4, l4 or h100 (gpus.tf)."
  type        = string
  default     = "l4"

  validation {
    condition     = contains(["t4", "l4", "h100"], var.gpu)
    error_message = "gpu must be t4, l4 or h100."
  }
}
