variable "project_id" {
  description = "GCP project that owns the cluster."
  type        = string
}

variable "region" {
  description = "Region of the (regional) cluster, e.g. us-central1."
  type        = string
}

variable "cluster_name" {
  description = "GKE cluster name."
  type        = string
  default     = "kvroute"
}

variable "network" {
  description = "VPC network self link or name; the default network when empty."
  type        = string
  default     = "default"
}

variable "subnetwork" {
  description = "Subnetwork self link or name; GKE picks the region's default when empty."
  type        = string
  default     = ""
}

variable "release_channel" {
  description = "GKE release channel: RAPID, REGULAR or STABLE."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the cluster until set to false."
  type        = bool
  default     = true
}

variable "system_machine_type" {
  description = "Machine type of the CPU pool that runs kvroute, Prometheus and kube-system."
  type        = string
  default     = "e2-standard-4"
}

variable "system_nodes_per_zone" {
  description = "CPU nodes in each of the region's zones."
  type        = number
  default     = 1
}

variable "gpu_zones" {
  description = "Zones for the GPU pool: the accelerator type must be offered in each (gcloud compute accelerator-types list)."
  type        = list(string)
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool; must accept the accelerator (g2-* for L4, a2-* for A100, a3-* for H100)."
  type        = string
  default     = "g2-standard-8"
}

variable "gpu_type" {
  description = "Accelerator type, e.g. nvidia-l4, nvidia-tesla-a100, nvidia-h100-80gb."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_count" {
  description = "GPUs per node (one vLLM pod per GPU with the example manifests)."
  type        = number
  default     = 1
}

variable "gpu_driver_version" {
  description = "GKE-managed NVIDIA driver: DEFAULT, LATEST, or INSTALLATION_DISABLED to bring your own (GPU Operator)."
  type        = string
  default     = "LATEST"

  validation {
    condition     = contains(["DEFAULT", "LATEST", "INSTALLATION_DISABLED"], var.gpu_driver_version)
    error_message = "gpu_driver_version must be DEFAULT, LATEST or INSTALLATION_DISABLED."
  }
}

variable "gpu_min_nodes" {
  description = "Lower bound of the GPU pool's autoscaler, across all gpu_zones (0 lets an idle fleet cost nothing)."
  type        = number
  default     = 0
}

variable "gpu_max_nodes" {
  description = "Upper bound of the GPU pool's autoscaler, across all gpu_zones."
  type        = number
  default     = 4
}

variable "gpu_spot" {
  description = "Spot VMs for the GPU pool: far cheaper, preempted with 30 s notice (vLLM pods restart elsewhere)."
  type        = bool
  default     = false
}

variable "gpu_disk_size_gb" {
  description = "Boot disk per GPU node: the vLLM image and model weights land here."
  type        = number
  default     = 200
}

variable "labels" {
  description = "Labels on the cluster and its nodes' VMs."
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

variable "private_nodes" {
  description = "Nodes without public IPs, with Cloud NAT for image and model downloads."
  type        = bool
  default     = true
}

variable "master_authorized_cidrs" {
  description = "CIDRs allowed to reach the control plane's endpoint (your office, VPN or CI); empty: none from outside Google Cloud."
  type        = list(string)
  default     = []
}

variable "secrets_kms_key" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) that encrypts Secrets in etcd; empty: Google's default encryption only."
  type        = string
  default     = ""
}
