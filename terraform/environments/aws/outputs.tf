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

output "lifecycle_hook_names" {
  description = "Termination lifecycle hook of each fleet's group: each node's agent drains it, then completes the hook."
  value = {
    query    = module.query_fleet.lifecycle_hook_name
    executor = module.executor_fleet.lifecycle_hook_name
    indexer  = module.indexer_fleet.lifecycle_hook_name
  }
}

output "query_health_check" {
  description = "The query target group's health check (interval_seconds, unhealthy_threshold, seconds_to_unhealthy, deregistration_delay_seconds, ...): an upgrade play pauses at least seconds_to_unhealthy after draining a node."
  value       = module.query_fleet.health_check
}

output "release_parameter" {
  description = "SSM parameter with the release hosts install at first boot; the upgrade play writes the release it installed: aws ssm put-parameter --overwrite --name <this> --value vector-appliance==X"
  value       = aws_ssm_parameter.release.name
}

output "role_arns" {
  description = "IAM role of each fleet."
  value       = module.iam.role_arns
}

output "vpc_id" {
  description = "The VPC the appliance runs in."
  value       = module.network.vpc_id
}
