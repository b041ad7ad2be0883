output "user_data" {
  description = "The cloud-init document (#cloud-config), as text."
  value       = local.user_data
}

output "user_data_base64" {
  description = "The cloud-init document, base64-encoded for a launch template."
  value       = base64encode(local.user_data)
}

output "service_name" {
  description = "The systemd unit that runs the node."
  value       = "${local.service}.service"
}
