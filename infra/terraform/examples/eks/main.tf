# Example root module: a VPC and an EKS cluster with a GPU node group (T4, L4 or H100: var.gpu, gpus.tf)
# for kvroute + vLLM.
#   cp terraform.tfvars.example terraform.tfvars   # then edit
#   terraform init && terraform plan

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12, < 3.0"
    }
  }
}

provider "aws" {
  region = var.region
}

# The module installs the NVIDIA device plugin and the Cluster Autoscaler with Helm, into the cluster it
# creates; the token comes from the AWS CLI of whoever runs terraform.
provider "helm" {
  kubernetes {
    host                   = module.cluster.endpoint
    cluster_ca_certificate = base64decode(module.cluster.ca_certificate)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.cluster.cluster_name, "--region", var.region]
    }
  }
}

data "aws_availability_zones" "available" {
  state = "available"
}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, 3)
}

# Private subnets for nodes (NAT for image and model downloads), public ones for load balancers. The
# role tags let the AWS Load Balancer Controller find them.
module "vpc" {
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 5.13"

  name               = var.cluster_name
  cidr               = var.vpc_cidr
  azs                = local.azs
  private_subnets    = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets     = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 48 + i)]
  enable_nat_gateway = true
  # One NAT gateway is enough for an example; use one per AZ in production.
  single_nat_gateway = true

  private_subnet_tags = { "kubernetes.io/role/internal-elb" = 1 }
  public_subnet_tags  = { "kubernetes.io/role/elb" = 1 }
  tags                = var.tags
}

module "cluster" {
  source = "../../modules/eks-gpu-cluster"

  cluster_name        = var.cluster_name
  subnet_ids          = module.vpc.private_subnets
  public_access_cidrs = var.public_access_cidrs
  gpu_instance_types  = local.gpu_pool.instance_types
  gpu_label           = var.gpu
  gpu_max_nodes       = var.gpu_max_nodes
  tags                = var.tags
}
