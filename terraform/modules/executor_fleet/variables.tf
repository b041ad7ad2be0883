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
  description = "SSM parameter with the AMI when ami_id is null (Amazon Linux 2023)."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "instance_type" {
  description = "Instance type of the executors: one with local NVMe instance storage for the cache (i4i, i3en, i7ie, or a d variant such as c6id, m6id, r6id)."
  type        = string
  default     = "i4i.xlarge"

  validation {
    condition     = can(regex("^(i[0-9][a-z]*|im4gn|is4gen|[cmrxz][0-9][a-z]*d[a-z]*)\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must have local NVMe instance storage: an i3/i4i/i7ie/im4gn/is4gen type or a d variant (c6id, m6id, r6id, ...)."
  }
}

variable "min_size" {
  description = "Fewest executors."
  type        = number
  default     = 2

  validation {
    condition     = var.min_size >= 1
    error_message = "min_size must be at least 1: searches need an executor."
  }
}

variable "max_size" {
  description = "Most executors."
  type        = number
  default     = 8

  validation {
    condition     = var.max_size >= 1 && var.max_size <= 200
    error_message = "max_size must be between 1 and 200."
  }
}

variable "cpu_target_percent" {
  description = "Average CPU the autoscaling group keeps the executors at (target tracking). Each change of the fleet moves some cache keys, so keep scaling calm."
  type        = number
  default     = 70

  validation {
    condition     = var.cpu_target_percent >= 10 && var.cpu_target_percent <= 95
    error_message = "cpu_target_percent must be between 10 and 95."
  }
}

variable "port" {
  description = "Port the executors listen on."
  type        = number
  default     = 8181

  validation {
    condition     = var.port >= 1024 && var.port <= 65535
    error_message = "port must be between 1024 and 65535."
  }
}

variable "flight_port_offset" {
  description = "The executors serve task batches over Arrow Flight on port + this offset (setting flight_port_offset); 0 turns Flight off (batches over HTTP). The network module's executor_flight_port must match."
  type        = number
  default     = 1000

  validation {
    condition     = var.flight_port_offset == 0 || (var.flight_port_offset >= 1 && var.port + var.flight_port_offset <= 65535)
    error_message = "flight_port_offset must be 0 (off) or put port + flight_port_offset at 65535 at most."
  }
}

variable "cache_mount" {
  description = "Mount point of the NVMe cache tier (APPLIANCE_CACHE_DIR)."
  type        = string
  default     = "/mnt/appliance-cache"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+$", var.cache_mount))
    error_message = "cache_mount must be an absolute path."
  }
}
