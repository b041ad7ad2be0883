output "role_arns" {
  description = "Role ARN of each fleet: query, executor, indexer."
  value       = { for k, r in aws_iam_role.fleet : k => r.arn }
}

output "role_names" {
  description = "Role name of each fleet: query, executor, indexer."
  value       = { for k, r in aws_iam_role.fleet : k => r.name }
}

output "instance_profile_names" {
  description = "Instance profile of each fleet, for its launch template: query, executor, indexer."
  value       = { for k, p in aws_iam_instance_profile.fleet : k => p.name }
}

output "instance_profile_arns" {
  description = "Instance profile ARN of each fleet: query, executor, indexer."
  value       = { for k, p in aws_iam_instance_profile.fleet : k => p.arn }
}
