# Example root module: a GKE cluster with a GPU node pool (T4, L4 or H100: var.gpu, gpus.tf) for kvroute
# + vLLM.
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
  gpu_type     = local.gpu_pool.gpu_type
  gpu_label    = var.gpu
  # The machine type is tied to the accelerator on GKE (n1 takes T4s, g2 comes with L4s, a3 with H100s).
  gpu_machine_type = local.gpu_pool.machine_type
  gpu_max_nodes    = var.gpu_max_nodes
  labels           = { app = "kvroute" }

  master_authorized_cidrs = var.master_authorized_cidrs
}
