output "url" {
  description = "URL of the appliance's HTTP API."
  value       = module.query_fleet.url
}

output "api_key_parameter" {
  description = "SSM parameter holding the API key: aws ssm get-parameter --with-decryption --name <this> --query Parameter.Value --output text"
  value       = aws_ssm_parameter.api_key.name
}

output "data_uri" {
  description = "Storage root of the appliance (APPLIANCE_DATA)."
  value       = module.storage.data_uri
}

output "bucket_name" {
  description = "The data bucket."
  value       = module.storage.bucket_name
}

output "events" {
  description = "Event queue setting of the appliance (APPLIANCE_EVENTS)."
  value       = local.settings.APPLIANCE_EVENTS
}

output "queue_url" {
  description = "URL of the event queue."
  value       = module.queue.queue_url
}

output "dead_letter_queue_url" {
  description = "URL of the dead-letter queue (inspect and redrive failed events)."
  value       = module.queue.dead_letter_queue_url
}

output "autoscaling_group_names" {
  description = "Autoscaling group of each fleet."
  value = {
    query    = module.query_fleet.autoscaling_group_name
    executor = module.executor_fleet.autoscaling_group_name
    indexer  = module.indexer_fleet.autoscaling_group_name
  }
}

output "role_arns" {
  description = "IAM role of each fleet."
  value       = module.iam.role_arns
}

output "vpc_id" {
  description = "The VPC the appliance runs in."
  value       = module.network.vpc_id
}
