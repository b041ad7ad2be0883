# ---- must be set ---------------------------------------------------------------------------------------------

variable "region" {
  description = "AWS region to deploy into."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region such as eu-west-1."
  }
}

variable "appliance_package" {
  description = "The first release every host installs: vector-appliance==VERSION on pip_index_url, an https:// URL of a wheel, or an s3:// URI of a wheel in the data bucket. Written to the SSM parameter /<name>/release at the first apply only: later releases come from the upgrade play, which records them there (README, Upgrades)."
  type        = string
}

variable "load_balancer_ingress_cidrs" {
  description = "Address ranges allowed to reach the API (your clients, or 0.0.0.0/0 for a public endpoint)."
  type        = list(string)
}

# ---- should be set -----------------------------------------------------------------------------------------------

variable "certificate_arn" {
  description = "ACM certificate for HTTPS on the load balancer. Null: plain HTTP (private or test deployments only)."
  type        = string
  default     = null
}

variable "name" {
  description = "Name prefix of every resource (lower-case letters, digits and dashes); one per deployment in an account."
  type        = string
  default     = "appliance"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 lower-case letters, digits or dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource (cost centre, owner, ...)."
  type        = map(string)
  default     = {}
}

# ---- network -----------------------------------------------------------------------------------------------------

variable "vpc_id" {
  description = "An existing VPC. Null: a new one is created."
  type        = string
  default     = null
}

variable "public_subnet_ids" {
  description = "With vpc_id: the load balancer's subnets."
  type        = list(string)
  default     = []
}

variable "private_subnet_ids" {
  description = "With vpc_id: the fleets' subnets (outbound HTTPS through NAT or endpoints)."
  type        = list(string)
  default     = []
}

variable "vpc_cidr_block" {
  description = "Address range of a created VPC."
  type        = string
  default     = "10.42.0.0/16"
}

variable "internal_load_balancer" {
  description = "Make the load balancer internal (reachable in the VPC only)."
  type        = bool
  default     = false
}

variable "waf_web_acl_arn" {
  description = "WAFv2 web ACL to put in front of the load balancer. Null: none."
  type        = string
  default     = null
}

# ---- fleets ------------------------------------------------------------------------------------------------------

variable "pip_index_url" {
  description = "Package index the hosts install from."
  type        = string
  default     = "https://pypi.org/simple"
}

variable "ami_ids" {
  description = "AMI per fleet (query, executor, indexer). A fleet left out uses the latest Amazon Linux 2023 (the indexers: the NVIDIA-driver Deep Learning Base AMI on Amazon Linux 2023)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.ami_ids) : contains(["query", "executor", "indexer"], k)])
    error_message = "ami_ids keys must be query, executor or indexer."
  }
}

variable "query_instance_type" {
  description = "Instance type of the query nodes."
  type        = string
  default     = "c7i.xlarge"
}

variable "query_min_size" {
  description = "Fewest query nodes."
  type        = number
  default     = 2
}

variable "query_max_size" {
  description = "Most query nodes."
  type        = number
  default     = 6
}

variable "executor_instance_type" {
  description = "Instance type of the executors (local NVMe instance storage: i4i, i3en, or a d variant)."
  type        = string
  default     = "i4i.xlarge"
}

variable "executor_min_size" {
  description = "Fewest executors."
  type        = number
  default     = 2
}

variable "executor_max_size" {
  description = "Most executors."
  type        = number
  default     = 8
}

variable "indexer_instance_type" {
  description = "Instance type of the indexers (GPU by default)."
  type        = string
  default     = "g5.xlarge"
}

variable "indexer_gpu" {
  description = "The indexer instance type has NVIDIA GPUs."
  type        = bool
  default     = true
}

variable "indexer_max_size" {
  description = "Most indexers at once (the minimum is 0)."
  type        = number
  default     = 2
}

variable "settings" {
  description = "Extra APPLIANCE_* settings for every node (see `appliance settings`), such as { APPLIANCE_LOG_LEVEL = \"warning\" }."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.settings) : can(regex("^APPLIANCE_[A-Z0-9_]+$", k))])
    error_message = "settings keys must be APPLIANCE_* names."
  }
}

# ---- secrets and protection --------------------------------------------------------------------------------------

variable "api_key" {
  description = "API key clients send in x-api-key. Null: a random one is generated at the first apply (read it from SSM: see the api_key_parameter output)."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.api_key == null || length(coalesce(var.api_key, "x")) >= 24
    error_message = "api_key must be null (generated) or at least 24 characters."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the buckets with their data. Keep false in production."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
  default     = true
}

variable "permissions_boundary_arn" {
  description = "Permissions boundary for the fleets' roles, where the organisation requires one."
  type        = string
  default     = null
}
