output "url" {
  description = "URL of the fleet's query node (the public HTTP API)."
  value       = local.url
  depends_on  = [terraform_data.fleet]
}

output "api_key" {
  description = "API key to send in x-api-key (`terraform output -raw api_key`)."
  value       = terraform_data.api_key.output
  sensitive   = true
}

output "pidfile" {
  description = "File holding the pid of the `appliance up` supervisor."
  value       = terraform_data.fleet.input.pidfile
}

output "log_file" {
  description = "Log of the `appliance up` supervisor and its nodes."
  value       = "${local.state_dir}/appliance.log"
}

output "data" {
  description = "Storage root the fleet serves from."
  value       = local.data
}
