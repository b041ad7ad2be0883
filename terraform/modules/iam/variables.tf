variable "name" {
  description = "Prefix of the roles, policies and instance profiles (<name>-<fleet>), and of the fleets' autoscaling groups and query target group that the roles may act on (the environment validates it)."
  type        = string
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

variable "parameter_arns" {
  description = "ARNs of the SSM parameters the nodes read: api_key (the clients' API key, query nodes only), internal_token (the query-node/executor shared secret) and release (the release a host installs at first boot)."
  type = object({
    api_key        = string
    internal_token = string
    release        = string
  })

  validation {
    condition     = alltrue([for a in values(var.parameter_arns) : can(regex("^arn:aws[a-z-]*:ssm:", a))])
    error_message = "parameter_arns must be SSM parameter ARNs."
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
