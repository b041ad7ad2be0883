output "autoscaling_group_name" {
  description = "Autoscaling group of the executors (the query nodes list its instances)."
  value       = aws_autoscaling_group.this.name
}

output "autoscaling_group_arn" {
  description = "ARN of the executors' autoscaling group."
  value       = aws_autoscaling_group.this.arn
}

output "launch_template_id" {
  description = "Launch template of the executors."
  value       = module.node_template.id
}

output "port" {
  description = "Port the executors listen on."
  value       = var.port
}
