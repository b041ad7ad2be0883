variable "name" {
  description = "Name prefix of every resource of this deployment (lower-case letters, digits and dashes)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 lower-case letters, digits or dashes, starting with a letter."
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

variable "subnet_ids" {
  description = "Private subnets the hosts run in (outbound HTTPS needed)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must be a non-empty list of subnet ids."
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

variable "appliance_package" {
  description = "What pip installs on the hosts: vector-appliance==VERSION on pip_index_url, an https:// URL of a wheel, or an s3:// URI of a wheel in the data bucket."
  type        = string

  validation {
    condition     = length(trimspace(var.appliance_package)) > 0 && !can(regex("[\\s'\"]", var.appliance_package))
    error_message = "appliance_package must be one pip requirement or URL, without spaces or quotes."
  }
}

variable "pip_index_url" {
  description = "Package index the hosts install from."
  type        = string
  default     = "https://pypi.org/simple"

  validation {
    condition     = can(regex("^https://", var.pip_index_url))
    error_message = "pip_index_url must be an https:// URL."
  }
}

variable "settings" {
  description = "APPLIANCE_* settings of the nodes (APPLIANCE_DATA, APPLIANCE_EVENTS, ...); this module adds host and port."
  type        = map(string)
  default     = {}
}

variable "internal_token_parameter" {
  description = "Name of the SSM SecureString parameter with the query-node/executor shared secret."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource (and propagated to the instances)."
  type        = map(string)
  default     = {}
}

variable "ami_ssm_parameter" {
  description = "SSM parameter with the AMI when ami_id is null: the Deep Learning Base AMI (Amazon Linux 2023) with the NVIDIA driver."
  type        = string
  default     = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
}

variable "instance_type" {
  description = "Instance type of the indexers: a GPU type by default (k-means training and encoding run on the GPU)."
  type        = string
  default     = "g5.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type such as g5.xlarge."
  }
}

variable "gpu" {
  description = "The instance type has NVIDIA GPUs: the service waits for the driver before it starts. Set false with a CPU instance type."
  type        = bool
  default     = true
}

variable "max_size" {
  description = "Most indexers at once (the fleet's minimum is 0: no instance runs while the queue is empty)."
  type        = number
  default     = 2

  validation {
    condition     = var.max_size >= 1 && var.max_size <= 50
    error_message = "max_size must be between 1 and 50."
  }
}

variable "queue_name" {
  description = "Name of the event queue whose depth scales the fleet."
  type        = string
}

variable "events_per_indexer" {
  description = "Waiting events per running indexer: the fleet grows by one indexer for each this many waiting events, up to max_size."
  type        = number
  default     = 10

  validation {
    condition     = var.events_per_indexer >= 1
    error_message = "events_per_indexer must be at least 1."
  }
}

variable "idle_minutes" {
  description = "Minutes the queue must be empty (no waiting and no in-flight event) before the fleet scales back to 0."
  type        = number
  default     = 15

  validation {
    condition     = var.idle_minutes >= 1 && var.idle_minutes <= 1440
    error_message = "idle_minutes must be between 1 and 1440."
  }
}
