# A regional GKE cluster with a small CPU pool (kvroute, monitoring, kube-system) and an autoscaled
# GPU pool for vLLM. GKE installs the NVIDIA driver (gpu_driver_installation_config) and runs its own
# device plugin on GPU nodes, so nothing else is needed before `nvidia.com/gpu` can be requested.

resource "google_service_account" "nodes" {
  project      = var.project_id
  account_id   = substr("${var.cluster_name}-nodes", 0, 30)
  display_name = "GKE nodes of ${var.cluster_name}"
}

# The least a node needs: ship logs and metrics, pull images. The default compute service account has
# project Editor, far more than a node should carry.
resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/artifactregistry.reader",
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "this" {
  name       = var.cluster_name
  project    = var.project_id
  location   = var.region
  network    = var.network
  subnetwork = var.subnetwork == "" ? null : var.subnetwork

  # Node pools are managed below; the default pool cannot carry GPUs or our settings.
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = var.deletion_protection
  resource_labels          = var.labels

  release_channel {
    channel = var.release_channel
  }

  # VPC-native: pod IPs are routable, which headless Services (the vLLM example) rely on.
  ip_allocation_policy {}

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  # Dataplane V2 (eBPF) enforces NetworkPolicy: the policies in deploy/kubernetes that keep everything
  # but the router away from vLLM depend on it.
  datapath_provider = "ADVANCED_DATAPATH"

  # Nodes get no public IP (images and weights come through Cloud NAT, below); the control plane's
  # endpoint stays reachable from master_authorized_cidrs only.
  private_cluster_config {
    enable_private_nodes    = var.private_nodes
    enable_private_endpoint = false
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_cidrs
      content {
        cidr_block   = cidr_blocks.value
        display_name = "authorized-${cidr_blocks.key}"
      }
    }
  }

  # Client certificates are a static credential nobody can revoke; Google identities only.
  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  # Secrets (the admin token, API keys, the Hugging Face token) encrypted with your Cloud KMS key on
  # top of Google's default encryption, when one is given.
  database_encryption {
    state    = var.secrets_kms_key == "" ? "DECRYPTED" : "ENCRYPTED"
    key_name = var.secrets_kms_key == "" ? null : var.secrets_kms_key
  }

  # Control-plane logs (API server, scheduler, controller manager) next to the workloads' logs.
  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "APISERVER", "CONTROLLER_MANAGER", "SCHEDULER", "WORKLOADS"]
  }
}

# Private nodes reach Docker Hub (the vLLM image) and Hugging Face (weights) through NAT.
resource "google_compute_router" "nat" {
  count   = var.private_nodes ? 1 : 0
  name    = "${var.cluster_name}-nat"
  project = var.project_id
  region  = var.region
  network = var.network
}

resource "google_compute_router_nat" "nat" {
  count                              = var.private_nodes ? 1 : 0
  name                               = "${var.cluster_name}-nat"
  project                            = var.project_id
  region                             = var.region
  router                             = google_compute_router.nat[0].name
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

resource "google_container_node_pool" "system" {
  name       = "system"
  project    = var.project_id
  cluster    = google_container_cluster.this.id
  location   = var.region
  node_count = var.system_nodes_per_zone

  node_config {
    machine_type    = var.system_machine_type
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = { "kvroute/pool" = "system" }
    resource_labels = var.labels

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    # Verified boot chain; GKE's NVIDIA drivers are signed, so GPU nodes boot with it too.
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }
}

resource "google_container_node_pool" "gpu" {
  name           = "gpu"
  project        = var.project_id
  cluster        = google_container_cluster.this.id
  location       = var.region
  node_locations = var.gpu_zones

  autoscaling {
    total_min_node_count = var.gpu_min_nodes
    total_max_node_count = var.gpu_max_nodes
    # GPU stock varies by zone; take capacity wherever it exists rather than balancing zones.
    location_policy = "ANY"
  }

  node_config {
    machine_type    = var.gpu_machine_type
    spot            = var.gpu_spot
    disk_size_gb    = var.gpu_disk_size_gb
    disk_type       = "pd-balanced"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = { "kvroute/pool" = "gpu", "kvroute/gpu" = var.gpu_label }
    resource_labels = var.labels

    guest_accelerator {
      type  = var.gpu_type
      count = var.gpu_count

      gpu_driver_installation_config {
        gpu_driver_version = var.gpu_driver_version
      }
    }

    # GKE adds the nvidia.com/gpu=present:NoSchedule taint to GPU nodes itself; the vLLM example
    # tolerates it. Declaring it here as well would show as drift on every plan.

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    # Verified boot chain; GKE's NVIDIA drivers are signed, so GPU nodes boot with it too.
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  # A node pool update that recreates GPU nodes evicts every vLLM pod at once; surge one at a time.
  upgrade_settings {
    max_surge       = 1
    max_unavailable = 0
  }
}
