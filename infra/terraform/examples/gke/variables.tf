variable "project_id" {
  description = "GCP project to create the cluster in."
  type        = string
}

variable "region" {
  description = "Region of the cluster."
  type        = string
  default     = "us-central1"
}

variable "cluster_name" {
  description = "GKE cluster name."
  type        = string
  default     = "kvroute"
}

variable "gpu_zones" {
  description = "Zones of the region that offer nvidia-l4."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-c"]
}

variable "gpu_max_nodes" {
  description = "Upper bound of the GPU pool."
  type        = number
  default     = 4
}
