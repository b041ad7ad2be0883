output "autoscaling_group_name" {
  description = "Autoscaling group of the indexers (0 instances while the queue is empty)."
  value       = aws_autoscaling_group.this.name
}

output "launch_template_id" {
  description = "Launch template of the indexers."
  value       = module.node_template.id
}

output "scale_out_alarm_name" {
  description = "Alarm that starts indexers when events wait."
  value       = aws_cloudwatch_metric_alarm.backlog.alarm_name
}

output "idle_alarm_name" {
  description = "Alarm that scales the indexers back to 0."
  value       = aws_cloudwatch_metric_alarm.idle.alarm_name
}
