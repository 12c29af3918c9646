terraform {
  # Written and format-checked against 1.11; nothing newer than 1.5 is used.
  required_version = ">= 1.5"
  required_providers {
    google = {
      source = "hashicorp/google"
      # total_min/max_node_count and gpu_driver_installation_config are in 5.x and 6.x.
      version = ">= 5.40, < 7.0"
    }
  }
}
