variable "name" {
  description = "Prefix of the event queue and dead-letter queue names (<name>-events.fifo; the environment validates it)."
  type        = string
}

variable "visibility_timeout_seconds" {
  description = "Seconds a received event stays hidden before it is delivered again (APPLIANCE_EVENT_VISIBILITY_TIMEOUT: an indexer extends it while it works, so this is how long a crashed indexer's table waits)."
  type        = number
  default     = 60

  validation {
    condition     = var.visibility_timeout_seconds >= 1 && var.visibility_timeout_seconds <= 43200 && floor(var.visibility_timeout_seconds) == var.visibility_timeout_seconds
    error_message = "visibility_timeout_seconds must be a whole number between 1 and 43200 (12 hours)."
  }
}

variable "message_retention_seconds" {
  description = "How long an event waits in the queue for an indexer (indexers scale from zero, so allow for that)."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 3600 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 3600 (1 hour) and 1209600 (14 days)."
  }
}

variable "max_receive_count" {
  description = "Deliveries of an event without success before it moves to the dead-letter queue (APPLIANCE_EVENT_MAX_RECEIVES)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "dead_letter_retention_seconds" {
  description = "How long a failed event stays in the dead-letter queue for inspection and redrive."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dead_letter_retention_seconds >= 3600 && var.dead_letter_retention_seconds <= 1209600
    error_message = "dead_letter_retention_seconds must be between 3600 and 1209600 (14 days)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
