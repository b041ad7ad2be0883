variable "name" {
  description = "Prefix of the data bucket name (<name>-data-<account>-<region>; the logs bucket adds -logs) and of the KMS key alias (the environment validates it: 3-24 lower-case letters, digits and dashes)."
  type        = string
}

variable "bucket_name" {
  description = "Name of the data bucket. Null: <name>-data-<account id>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name (3-63 lower-case letters, digits, dots, dashes)."
  }
}

variable "tables_prefix" {
  description = "Key prefix of the storage root inside the bucket (APPLIANCE_DATA is s3://<bucket>/<tables_prefix>)."
  type        = string
  default     = "tables"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_./-]*[A-Za-z0-9_-]$", var.tables_prefix))
    error_message = "tables_prefix must be a key prefix without leading or trailing slash."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days a replaced or deleted object version is kept before it expires (Lance writes new objects; old versions only serve recovery)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 3650
    error_message = "noncurrent_version_expiration_days must be between 1 and 3650."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which an unfinished multipart upload is aborted."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1 && var.abort_incomplete_multipart_days <= 365
    error_message = "abort_incomplete_multipart_days must be between 1 and 365."
  }
}

variable "log_retention_days" {
  description = "Days the access logs (S3 server access logs, load balancer logs, VPC flow logs) are kept in the logs bucket."
  type        = number
  default     = 365

  validation {
    condition     = var.log_retention_days >= 1 && var.log_retention_days <= 3650
    error_message = "log_retention_days must be between 1 and 3650."
  }
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the data bucket's KMS key is deleted after a destroy."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the buckets with their objects. Keep false in production."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
