output "bucket_name" {
  description = "Name of the data bucket."
  value       = aws_s3_bucket.data.id
}

output "bucket_arn" {
  description = "ARN of the data bucket."
  value       = aws_s3_bucket.data.arn
}

output "data_uri" {
  description = "Storage root of the appliance (APPLIANCE_DATA)."
  value       = "s3://${aws_s3_bucket.data.id}/${var.tables_prefix}"
}

output "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the data bucket (the fleets need kms:Decrypt and kms:GenerateDataKey on it)."
  value       = aws_kms_key.data.arn
}

output "logs_bucket_name" {
  description = "Name of the logs bucket (S3 server access logs under s3/, load balancer logs under alb/, VPC flow logs under AWSLogs/)."
  value       = aws_s3_bucket.logs.id
}

output "logs_bucket_arn" {
  description = "ARN of the logs bucket."
  value       = aws_s3_bucket.logs.arn
}
