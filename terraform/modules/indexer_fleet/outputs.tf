output "autoscaling_group_name" {
  description = "Autoscaling group of the indexers (0 instances while the queue is empty)."
  value       = module.node_group.autoscaling_group_name
}

output "launch_template_id" {
  description = "Launch template of the indexers."
  value       = module.node_group.launch_template_id
}

output "scale_out_alarm_name" {
  description = "Alarm that starts indexers when events wait."
  value       = aws_cloudwatch_metric_alarm.backlog.alarm_name
}

output "idle_alarm_name" {
  description = "Alarm that scales the indexers back to 0."
  value       = aws_cloudwatch_metric_alarm.idle.alarm_name
}

output "lifecycle_hook_name" {
  description = "Termination lifecycle hook of the indexer group (the nodes' agents stop the indexer, then complete it)."
  value       = module.node_group.lifecycle_hook_name
}
