output "url" {
  description = "URL of the appliance's HTTP API (the load balancer)."
  value       = "${var.certificate_arn != null ? "https" : "http"}://${aws_lb.this.dns_name}"
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer (point a CNAME or alias record at it)."
  value       = aws_lb.this.dns_name
}

output "load_balancer_zone_id" {
  description = "Hosted zone of the load balancer, for a Route 53 alias record."
  value       = aws_lb.this.zone_id
}

output "target_group_arn" {
  description = "Target group of the query nodes (health check /readyz)."
  value       = aws_lb_target_group.this.arn
}

output "autoscaling_group_name" {
  description = "Autoscaling group of the query nodes."
  value       = module.node_group.autoscaling_group_name
}

output "launch_template_id" {
  description = "Launch template of the query nodes."
  value       = module.node_group.launch_template_id
}

output "health_check" {
  description = "The target group's health check and deregistration delay: a node that starts failing /readyz (drained) stops getting clients after seconds_to_unhealthy; an upgrade play pauses at least that long after draining a node."
  value = merge(local.health_check, {
    seconds_to_unhealthy         = local.health_check.interval_seconds * local.health_check.unhealthy_threshold
    deregistration_delay_seconds = local.deregistration_delay_seconds
  })
}

output "lifecycle_hook_name" {
  description = "Termination lifecycle hook of the query group (the nodes' agents leave the target group, drain, then complete it)."
  value       = module.node_group.lifecycle_hook_name
}
