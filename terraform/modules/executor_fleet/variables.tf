variable "host" {
  description = "Settings every host of the deployment shares, built once by the environment (see modules/node_group, which validates them)."
  type        = any
}

variable "fleet" {
  description = "Overrides of the executor fleet's defaults: instance_type (i4i.xlarge; it must have local NVMe instance storage: i3/i4i/i7ie/im4gn/is4gen or a d variant such as c6id), min_size (2), max_size (8), cpu_target_percent (70: keep scaling calm, each change moves cache keys), drain_seconds (120), min_healthy_percentage (100), max_healthy_percentage (150) of the instance refresh."
  type        = any
  default     = {}
}

variable "port" {
  description = "Port the executors listen on."
  type        = number
  default     = 8181
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
}
