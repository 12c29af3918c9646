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
  description = "CIDRs allowed to reach the Kubernetes API."
  type        = list(string)
  default     = ["0.0.0.0/0"]
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
