variable "host" {
  description = "What every host of the deployment shares, built once by the environment and handed unchanged to each fleet: the name prefix, the private subnets, the security group, instance profile and AMI of each role (maps by role: query, executor, indexer; a role left out of ami_ids boots the latest image of its fleet's ami_ssm_parameter), the root volume, the release (appliance_package; release_parameter names the SSM parameter holding the release installed last, read at every boot), the package index, the APPLIANCE_* settings, the internal token's SSM parameter and the tags. Validated here, once for the three fleets."
  type = object({
    name                     = string
    subnet_ids               = list(string)
    security_group_ids       = map(string)
    instance_profile_names   = map(string)
    ami_ids                  = optional(map(string), {})
    root_volume_size_gb      = optional(number, 30)
    ebs_kms_key_arn          = optional(string)
    appliance_package        = string
    release_parameter        = optional(string)
    pip_index_url            = optional(string, "https://pypi.org/simple")
    settings                 = optional(map(string), {})
    internal_token_parameter = string
    tags                     = optional(map(string), {})
  })

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.host.name))
    error_message = "host.name must be 3-24 lower-case letters, digits or dashes, starting with a letter."
  }

  validation {
    condition     = length(var.host.subnet_ids) > 0 && alltrue([for s in var.host.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "host.subnet_ids must be a non-empty list of subnet ids."
  }

  validation {
    condition     = alltrue([for id in values(var.host.security_group_ids) : can(regex("^sg-[0-9a-f]+$", id))])
    error_message = "host.security_group_ids must map roles to security group ids (sg-...)."
  }

  validation {
    condition     = alltrue([for id in values(var.host.ami_ids) : can(regex("^ami-[0-9a-f]+$", id))])
    error_message = "host.ami_ids must map roles to AMI ids (ami-...)."
  }

  validation {
    condition     = var.host.root_volume_size_gb >= 16 && var.host.root_volume_size_gb <= 2048
    error_message = "host.root_volume_size_gb must be between 16 and 2048."
  }
}

variable "node" {
  description = "What this fleet's hosts run, filled in by the fleet module: role, the appliance command, instance type, the SSM parameter of its default AMI (Amazon Linux 2023 unless given), the HTTP port it serves (drained through /admin/drain; null for indexers), settings and SSM secrets beyond the host's, the NVMe cache mount (executors), the executor group to route to (query nodes), gpu (indexers) and the target group it leaves before draining (query nodes)."
  type = object({
    role               = string
    command            = list(string)
    instance_type      = string
    ami_ssm_parameter  = optional(string, "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
    port               = optional(number)
    settings           = optional(map(string), {})
    secret_parameters  = optional(map(string), {})
    cache_mount        = optional(string)
    executor_discovery = optional(object({ autoscaling_group_name = string, port = number }))
    gpu                = optional(bool, false)
    target_group_name  = optional(string)
  })

  validation {
    condition     = contains(["query", "executor", "indexer"], var.node.role)
    error_message = "node.role must be query, executor or indexer."
  }

  validation {
    condition = can(regex(var.node.role == "executor"
      ? "^(i[0-9][a-z]*|im4gn|is4gen|[cmrxz][0-9][a-z]*d[a-z]*)\\.[a-z0-9]+$"
    : "^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.node.instance_type))
    error_message = "node.instance_type must be an EC2 instance type; an executor's must have local NVMe instance storage (i3/i4i/i7ie/im4gn/is4gen, or a d variant such as c6id, m6id, r6id)."
  }

  validation {
    condition     = var.node.port == null || try(var.node.port >= 1024 && var.node.port <= 65535, false)
    error_message = "node.port must be between 1024 and 65535."
  }
}

variable "group" {
  description = "The fleet's autoscaling group: min_size and max_size, health checks (EC2, or ELB with target_group_arns), cpu_target_percent for target tracking (null: the fleet scales it otherwise), the instance refresh (min_healthy_percentage and max_healthy_percentage of the desired capacity stay in service while new nodes warm for warmup_seconds) and drain_seconds, how long a terminating node may drain before its lifecycle hook gives up waiting and lets it go."
  type = object({
    min_size                  = number
    max_size                  = number
    health_check_type         = optional(string, "EC2")
    health_check_grace_period = optional(number, 600)
    target_group_arns         = optional(list(string), [])
    cpu_target_percent        = optional(number)
    min_healthy_percentage    = optional(number, 100)
    max_healthy_percentage    = optional(number, 150)
    warmup_seconds            = optional(number, 300)
    drain_seconds             = optional(number, 120)
  })

  validation {
    condition     = var.group.min_size >= (var.group.health_check_type == "ELB" || var.group.cpu_target_percent != null ? 1 : 0) && var.group.min_size <= var.group.max_size && var.group.max_size <= 200
    error_message = "group.min_size must be at most max_size (200 at most), and at least 1 for a fleet that serves (query nodes and executors)."
  }

  validation {
    condition     = var.group.cpu_target_percent == null || try(var.group.cpu_target_percent >= 10 && var.group.cpu_target_percent <= 95, false)
    error_message = "group.cpu_target_percent must be null or between 10 and 95."
  }

  validation {
    condition     = var.group.min_healthy_percentage >= 0 && var.group.min_healthy_percentage <= 100 && var.group.max_healthy_percentage >= 100 && var.group.max_healthy_percentage <= 200 && var.group.max_healthy_percentage - var.group.min_healthy_percentage <= 100 && (var.group.min_healthy_percentage < 100 || var.group.max_healthy_percentage > 100)
    error_message = "group.min_healthy_percentage (0-100) and max_healthy_percentage (100-200) must differ by 100 at most, and leave room to replace a node."
  }

  validation {
    condition     = contains(["EC2", "ELB"], var.group.health_check_type) && var.group.warmup_seconds >= 0 && var.group.drain_seconds >= 10 && var.group.drain_seconds <= 3600
    error_message = "group.health_check_type must be EC2 or ELB, warmup_seconds at least 0 and drain_seconds between 10 and 3600."
  }
}
