terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }

  # Keep state remotely and locked for a real deployment, for example:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "appliance/terraform.tfstate"
  #   region       = "eu-west-1"
  #   use_lockfile = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, { "appliance:deployment" = var.name, "managed-by" = "terraform" })
  }
}
