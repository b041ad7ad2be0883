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
  value       = aws_autoscaling_group.this.name
}

output "launch_template_id" {
  description = "Launch template of the query nodes."
  value       = module.node_template.id
}
