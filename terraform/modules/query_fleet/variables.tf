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
  description = "Instance type of the query nodes (CPU and network: they parse, plan, merge and fetch payloads)."
  type        = string
  default     = "c7i.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type such as c7i.xlarge."
  }
}

variable "min_size" {
  description = "Fewest query nodes."
  type        = number
  default     = 2

  validation {
    condition     = var.min_size >= 1
    error_message = "min_size must be at least 1: the load balancer needs a node to answer."
  }
}

variable "max_size" {
  description = "Most query nodes."
  type        = number
  default     = 6

  validation {
    condition     = var.max_size >= 1 && var.max_size <= 100
    error_message = "max_size must be between 1 and 100."
  }
}

variable "cpu_target_percent" {
  description = "Average CPU the autoscaling group keeps the query nodes at (target tracking)."
  type        = number
  default     = 60

  validation {
    condition     = var.cpu_target_percent >= 10 && var.cpu_target_percent <= 95
    error_message = "cpu_target_percent must be between 10 and 95."
  }
}

variable "port" {
  description = "Port the query nodes listen on."
  type        = number
  default     = 8080

  validation {
    condition     = var.port >= 1024 && var.port <= 65535
    error_message = "port must be between 1024 and 65535."
  }
}

variable "vpc_id" {
  description = "VPC of the load balancer's target group."
  type        = string
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the load balancer (two zones or more)."
  type        = list(string)

  validation {
    condition     = length(var.load_balancer_subnet_ids) >= 2
    error_message = "An application load balancer needs subnets in at least two zones."
  }
}

variable "load_balancer_security_group_id" {
  description = "Security group of the load balancer (from the network module)."
  type        = string
}

variable "internal" {
  description = "Make the load balancer internal (reachable inside the VPC only) rather than internet-facing."
  type        = bool
  default     = false
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener (443); port 80 then redirects to it. Null: plain HTTP on port 80, for private or test deployments only."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be null or an ACM certificate ARN."
  }
}

variable "access_logs_bucket" {
  description = "Bucket receiving the load balancer's access logs (under alb/)."
  type        = string
}

variable "waf_web_acl_arn" {
  description = "WAFv2 web ACL to associate with the load balancer. Null: none."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion (turn off before `terraform destroy`)."
  type        = bool
  default     = true
}

variable "api_key_parameter" {
  description = "Name of the SSM SecureString parameter with the clients' API key."
  type        = string
}

variable "executor_autoscaling_group_name" {
  description = "Executor fleet the query nodes route to (its InService instances are listed every minute)."
  type        = string
}

variable "executor_port" {
  description = "Port the executors listen on."
  type        = number
  default     = 8181
}
