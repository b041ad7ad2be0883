variable "name" {
  description = "Name prefix of every resource of this deployment (lower-case letters, digits and dashes)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 lower-case letters, digits or dashes, starting with a letter."
  }
}

variable "role" {
  description = "Fleet role the hosts run (query, executor or indexer); it names and tags them."
  type        = string

  validation {
    condition     = contains(["query", "executor", "indexer"], var.role)
    error_message = "role must be query, executor or indexer."
  }
}

variable "ami_id" {
  description = "AMI of the hosts. Null: the latest image named by ami_ssm_parameter."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "ami_id must be null or an AMI id (ami-...)."
  }
}

variable "security_group_id" {
  description = "Security group of the hosts (from the network module)."
  type        = string

  validation {
    condition     = can(regex("^sg-[0-9a-f]+$", var.security_group_id))
    error_message = "security_group_id must be a security group id (sg-...)."
  }
}

variable "instance_profile_name" {
  description = "Instance profile of the hosts (from the iam module)."
  type        = string
}

variable "root_volume_size_gb" {
  description = "Size of the encrypted gp3 root volume."
  type        = number
  default     = 30

  validation {
    condition     = var.root_volume_size_gb >= 16 && var.root_volume_size_gb <= 2048
    error_message = "root_volume_size_gb must be between 16 and 2048."
  }
}

variable "ebs_kms_key_arn" {
  description = "KMS key of the root volume. Null: the account's default EBS key."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags added to every resource (and propagated to the instances)."
  type        = map(string)
  default     = {}
}

variable "ami_ssm_parameter" {
  description = "SSM parameter with the AMI when ami_id is null (Amazon Linux 2023)."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "instance_type" {
  description = "Instance type of the hosts (each fleet validates its own choice)."
  type        = string
}

variable "user_data_base64" {
  description = "cloud-init user data of the hosts, base64 (from the cloud_init module)."
  type        = string
}
