variable "host" {
  description = "Settings every host of the deployment shares, built once by the environment (see modules/node_group, which validates them)."
  type        = any
}

variable "fleet" {
  description = "Overrides of the indexer fleet's defaults: instance_type (g5.xlarge), gpu (true: the service waits for the NVIDIA driver; set false with a CPU type, and ami_ssm_parameter to plain Amazon Linux), ami_ssm_parameter (the NVIDIA-driver Deep Learning Base AMI on Amazon Linux 2023), max_size (2; the minimum is 0), drain_seconds (60)."
  type        = any
  default     = {}
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
