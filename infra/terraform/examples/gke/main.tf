# Example root module: a GKE cluster with an L4 GPU pool for kvroute + vLLM.
#   cp terraform.tfvars.example terraform.tfvars   # then edit
#   terraform init && terraform plan

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.40, < 7.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

module "cluster" {
  source = "../../modules/gke-gpu-cluster"

  project_id   = var.project_id
  region       = var.region
  cluster_name = var.cluster_name
  gpu_zones    = var.gpu_zones
  gpu_type     = "nvidia-l4"
  # g2-standard-8: 1x L4 (24 GB), enough for a 7-8B model in bf16 with room for KV cache.
  gpu_machine_type = "g2-standard-8"
  gpu_max_nodes    = var.gpu_max_nodes
  labels           = { app = "kvroute" }
}
