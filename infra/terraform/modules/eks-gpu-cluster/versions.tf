terraform {
  # Written and format-checked against 1.11; nothing newer than 1.5 is used.
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source = "hashicorp/aws"
      # access_config and the AL2023 NVIDIA AMI type are accepted from 5.x on.
      version = ">= 5.80, < 7.0"
    }
    helm = {
      source = "hashicorp/helm"
      # 2.x: the `kubernetes { }` block syntax the examples configure it with.
      version = ">= 2.12, < 3.0"
    }
  }
}
