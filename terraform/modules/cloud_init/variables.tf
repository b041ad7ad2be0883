variable "role" {
  description = "Which node this host runs: query, executor or indexer."
  type        = string

  validation {
    condition     = contains(["query", "executor", "indexer"], var.role)
    error_message = "role must be query, executor or indexer."
  }
}

variable "command" {
  description = "The appliance subcommand the systemd service runs, such as [\"serve\", \"query\"] or [\"indexer\"]."
  type        = list(string)

  validation {
    condition     = length(var.command) > 0 && alltrue([for a in var.command : can(regex("^[A-Za-z0-9_.=:/-]+$", a))])
    error_message = "command must be a non-empty list of plain words (letters, digits, _ . = : / -)."
  }
}

variable "appliance_package" {
  description = "What pip installs on the host: a requirement on pip_index_url (vector-appliance==0.1.0), an https:// URL of a wheel, or an s3:// URI of a wheel (copied with the instance role)."
  type        = string

  validation {
    condition     = length(trimspace(var.appliance_package)) > 0 && !can(regex("[\\s'\"]", var.appliance_package))
    error_message = "appliance_package must be one pip requirement or URL, without spaces or quotes."
  }
}

variable "pip_index_url" {
  description = "Package index pip installs from."
  type        = string
  default     = "https://pypi.org/simple"

  validation {
    condition     = can(regex("^https://", var.pip_index_url))
    error_message = "pip_index_url must be an https:// URL."
  }
}

variable "settings" {
  description = "APPLIANCE_* settings of the node (see `appliance settings`), written to /etc/appliance/appliance.env."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.settings) : can(regex("^(APPLIANCE|AWS)_[A-Z0-9_]+$", k))])
    error_message = "settings keys must be APPLIANCE_* or AWS_* environment variable names."
  }
}

variable "secret_parameters" {
  description = "Environment variable name => SSM SecureString parameter name, fetched at each service start with the instance role, so secrets never sit in user data."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.secret_parameters) : can(regex("^APPLIANCE_[A-Z0-9_]+$", k))])
    error_message = "secret_parameters keys must be APPLIANCE_* environment variable names."
  }
}

variable "region" {
  description = "AWS region the host's aws CLI calls (SSM, S3, autoscaling)."
  type        = string
}

variable "cache_nvme" {
  description = "Assemble the instance-store NVMe disks (RAID 0 when several), format them XFS and mount them at cache_mount for the executor cache."
  type        = bool
  default     = false
}

variable "cache_mount" {
  description = "Mount point of the NVMe cache (APPLIANCE_CACHE_DIR is set to it)."
  type        = string
  default     = "/mnt/appliance-cache"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+$", var.cache_mount))
    error_message = "cache_mount must be an absolute path."
  }
}

variable "executor_discovery" {
  description = "On a query node: the executor fleet to route to, written to the node's settings as APPLIANCE_EXECUTOR_ASG and APPLIANCE_EXECUTOR_ASG_PORT. The query node lists the group's InService instances every membership_poll_seconds and swaps its ring while it runs (a newcomer after its prewarm, a leaver at once): no restart. Null: no discovery."
  type = object({
    autoscaling_group_name = string
    port                   = number
  })
  default = null
}

variable "gpu" {
  description = "The host has NVIDIA GPUs (an AMI with the driver installed): the service waits for nvidia-smi to answer."
  type        = bool
  default     = false
}

variable "release_parameter" {
  description = "SSM parameter holding the release to install (a value like appliance_package), read at every first boot: the upgrade play writes the release it installed there, so a replacement or a scale-out never brings an older one back. Null: appliance_package."
  type        = string
  default     = null
}

variable "lifecycle_hook" {
  description = "The autoscaling group's termination lifecycle hook: appliance-lifecycle.service polls the instance metadata and, when the instance is to terminate, leaves target_group_name (query nodes), drains the node on port for up to drain_seconds (no port: stops the service), then completes the hook. Null: no agent."
  type = object({
    name                   = string
    autoscaling_group_name = string
    drain_seconds          = number
    port                   = optional(number)
    target_group_name      = optional(string)
    # executors: seconds between leaving InService and draining, so every query node's next look at the group
    # (setting membership_poll_seconds, 10 s) has taken the executor out of its ring before it refuses work
    leave_seconds = optional(number, 15)
  })
  default = null
}
