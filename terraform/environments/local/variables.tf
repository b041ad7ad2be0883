variable "appliance_bin" {
  description = "The `appliance` command to run. Empty: the repository's .venv/bin/appliance when it exists, else `appliance` on PATH."
  type        = string
  default     = ""
}

variable "state_dir" {
  description = "Folder for the fleet's pidfile and log. Empty: .fleet next to this configuration."
  type        = string
  default     = ""
}

variable "data" {
  description = "Storage root of the fleet: a local folder, file:// or s3:// URI (APPLIANCE_DATA). Empty: data/ under state_dir."
  type        = string
  default     = ""
}

variable "host" {
  description = "Address the query node listens on."
  type        = string
  default     = "127.0.0.1"

  validation {
    condition     = can(cidrhost("${var.host}/32", 0))
    error_message = "host must be an IPv4 address, such as 127.0.0.1 or 0.0.0.0."
  }
}

variable "port" {
  description = "Port of the query node (the public HTTP API)."
  type        = number
  default     = 8080

  validation {
    condition     = var.port >= 1024 && var.port <= 65535 && floor(var.port) == var.port
    error_message = "port must be an integer between 1024 and 65535."
  }
}

variable "executors" {
  description = "Number of plan executors on this machine."
  type        = number
  default     = 2

  validation {
    condition     = var.executors >= 1 && var.executors <= 64 && floor(var.executors) == var.executors
    error_message = "executors must be an integer between 1 and 64."
  }
}

variable "executor_base_port" {
  description = "First port of the executors; they take executor_base_port .. executor_base_port + executors - 1. 0: port + 1."
  type        = number
  default     = 0

  validation {
    condition     = var.executor_base_port == 0 || (var.executor_base_port >= 1024 && var.executor_base_port <= 65535)
    error_message = "executor_base_port must be 0 or a port between 1024 and 65535."
  }
}

variable "api_key" {
  description = "API key clients send in x-api-key. Empty: one is generated at the first apply and kept in the state."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.api_key == "" || length(var.api_key) >= 16
    error_message = "api_key must be empty (generated) or at least 16 characters."
  }
}

variable "environment" {
  description = "Extra APPLIANCE_* settings for every process of the fleet (see `appliance settings`), such as { APPLIANCE_LOG_LEVEL = \"warning\" }."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.environment) : can(regex("^APPLIANCE_[A-Z0-9_]+$", k))])
    error_message = "environment keys must be APPLIANCE_* setting names, such as APPLIANCE_LOG_LEVEL."
  }
}

variable "startup_timeout_seconds" {
  description = "How long apply waits for the fleet to answer /readyz before it fails."
  type        = number
  default     = 120

  validation {
    condition     = var.startup_timeout_seconds >= 5 && var.startup_timeout_seconds <= 3600
    error_message = "startup_timeout_seconds must be between 5 and 3600."
  }
}

variable "managed_by" {
  description = "What runs the nodes: \"terraform\" (apply starts `appliance up`, destroy stops it) or \"ansible\" (apply starts nothing; the outputs describe the nodes for ansible/inventory/terraform_inventory.py, ansible/site.yml starts one process per node under nodes_root, and destroy stops them)."
  type        = string
  default     = "terraform"

  validation {
    condition     = contains(["terraform", "ansible"], var.managed_by)
    error_message = "managed_by must be \"terraform\" or \"ansible\"."
  }
}
