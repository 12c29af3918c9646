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
  description = "Zones of the region that offer the chosen GPU (gcloud compute accelerator-types list)."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-c"]
}

variable "gpu_max_nodes" {
  description = "Upper bound of the GPU pool."
  type        = number
  default     = 4
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

variable "master_authorized_cidrs" {
  description = "CIDRs allowed to reach the Kubernetes API (your office, VPN or CI)."
  type        = list(string)
}
