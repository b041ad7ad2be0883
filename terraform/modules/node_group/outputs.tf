output "autoscaling_group_name" {
  description = "Name of the fleet's autoscaling group."
  value       = aws_autoscaling_group.this.name
}

output "autoscaling_group_arn" {
  description = "ARN of the fleet's autoscaling group."
  value       = aws_autoscaling_group.this.arn
}

output "launch_template_id" {
  description = "Id of the fleet's launch template."
  value       = aws_launch_template.this.id
}

output "launch_template_version" {
  description = "Latest version of the launch template, which the autoscaling group launches."
  value       = aws_launch_template.this.latest_version
}

output "lifecycle_hook_name" {
  description = "Termination lifecycle hook of the group: the node's agent drains, then completes it."
  value       = aws_autoscaling_lifecycle_hook.drain.name
}

output "drain_seconds" {
  description = "How long a terminating node may drain (the hook waits 120 s more)."
  value       = var.group.drain_seconds
}
