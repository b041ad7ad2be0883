output "autoscaling_group_name" {
  description = "Autoscaling group of the executors (the query nodes list its instances)."
  value       = module.node_group.autoscaling_group_name
}

output "autoscaling_group_arn" {
  description = "ARN of the executors' autoscaling group."
  value       = module.node_group.autoscaling_group_arn
}

output "launch_template_id" {
  description = "Launch template of the executors."
  value       = module.node_group.launch_template_id
}

output "port" {
  description = "Port the executors listen on."
  value       = var.port
}

output "flight_port" {
  description = "Port of the executors' Arrow Flight servers (task batches from the query nodes); null when off."
  value       = var.flight_port_offset == 0 ? null : var.port + var.flight_port_offset
}

output "lifecycle_hook_name" {
  description = "Termination lifecycle hook of the executor group (the nodes' agents drain, then complete it)."
  value       = module.node_group.lifecycle_hook_name
}
