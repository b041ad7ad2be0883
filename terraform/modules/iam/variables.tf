variable "name" {
  description = "Name prefix of every resource of this deployment (lower-case letters, digits and dashes)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 lower-case letters, digits or dashes, starting with a letter."
  }
}

variable "bucket_arn" {
  description = "ARN of the data bucket."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]+$", var.bucket_arn))
    error_message = "bucket_arn must be an S3 bucket ARN."
  }
}

variable "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the data bucket."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "queue_arns" {
  description = "ARNs of the event queue and its dead-letter queue (query nodes send, indexers receive)."
  type        = list(string)

  validation {
    condition     = length(var.queue_arns) > 0 && alltrue([for a in var.queue_arns : can(regex("^arn:aws[a-z-]*:sqs:", a))])
    error_message = "queue_arns must be SQS queue ARNs."
  }
}

variable "api_key_parameter_arn" {
  description = "ARN of the SSM parameter holding the clients' API key (read by query nodes only)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ssm:", var.api_key_parameter_arn))
    error_message = "api_key_parameter_arn must be an SSM parameter ARN."
  }
}

variable "internal_token_parameter_arn" {
  description = "ARN of the SSM parameter holding the query-node/executor shared secret."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ssm:", var.internal_token_parameter_arn))
    error_message = "internal_token_parameter_arn must be an SSM parameter ARN."
  }
}

variable "session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore so operators reach hosts through Session Manager (no SSH keys, no inbound port)."
  type        = bool
  default     = true
}

variable "permissions_boundary_arn" {
  description = "Permissions boundary set on every role, where the organisation requires one. Null: none."
  type        = string
  default     = null

  validation {
    condition     = var.permissions_boundary_arn == null || can(regex("^arn:aws[a-z-]*:iam::", var.permissions_boundary_arn))
    error_message = "permissions_boundary_arn must be null or an IAM policy ARN."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
