output "vpc_id" {
  description = "The VPC the appliance runs in."
  value       = local.vpc_id
}

output "vpc_cidr_block" {
  description = "Address range of the VPC."
  value       = local.vpc_cidr
}

output "public_subnet_ids" {
  description = "Subnets of the load balancer."
  value       = local.create ? aws_subnet.public[*].id : var.public_subnet_ids
}

output "private_subnet_ids" {
  description = "Subnets of the fleets' instances."
  value       = local.create ? aws_subnet.private[*].id : var.private_subnet_ids
}

output "security_group_ids" {
  description = "Security group of each tier: load_balancer, query, executor, indexer."
  value = {
    load_balancer = aws_security_group.load_balancer.id
    query         = aws_security_group.query.id
    executor      = aws_security_group.executor.id
    indexer       = aws_security_group.indexer.id
  }
}
