locals {
  service = "appliance-${var.role}"
  env_file = join("\n", concat(
    ["# Written by cloud-init from Terraform; the service reads it at start."],
    [for k in sort(keys(var.settings)) : "${k}=${var.settings[k]}"],
    var.cache_nvme ? ["APPLIANCE_CACHE_DIR=${var.cache_mount}"] : [],
    # the query node follows the executor group itself (appliance/routing/sources.py), no restart on scaling
    var.executor_discovery == null ? [] : [
      "APPLIANCE_EXECUTOR_ASG=${var.executor_discovery.autoscaling_group_name}",
      "APPLIANCE_EXECUTOR_ASG_PORT=${var.executor_discovery.port}",
    ],
  ))
  secrets = [for k in sort(keys(var.secret_parameters)) : { env = k, parameter = var.secret_parameters[k] }]

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    role              = var.role
    service           = local.service
    command           = join(" ", var.command)
    appliance_package = var.appliance_package
    pip_index_url     = var.pip_index_url
    env_file          = local.env_file
    secrets           = local.secrets
    region            = var.region
    cache_nvme        = var.cache_nvme
    cache_mount       = var.cache_mount
    gpu               = var.gpu
    release_parameter = var.release_parameter
    lifecycle_agent   = var.lifecycle_hook == null ? null : file("${path.module}/files/appliance-lifecycle.py")
    lifecycle_config  = var.lifecycle_hook == null ? null : jsonencode(local.lifecycle_config)
  })
}

# What appliance-lifecycle (files/appliance-lifecycle.py) reads from /etc/appliance/lifecycle.json. Query nodes
# take the admin key (the API key when none is set) on /admin/drain, executors the internal token.
locals {
  lifecycle_config = var.lifecycle_hook == null ? null : {
    region                 = var.region
    hook_name              = var.lifecycle_hook.name
    autoscaling_group_name = var.lifecycle_hook.autoscaling_group_name
    drain_seconds          = var.lifecycle_hook.drain_seconds
    leave_seconds          = var.role == "executor" ? var.lifecycle_hook.leave_seconds : 0
    port                   = var.lifecycle_hook.port
    target_group_name      = var.lifecycle_hook.target_group_name
    service                = "${local.service}.service"
    env_files              = ["/etc/appliance/appliance.env", "/run/appliance/secrets.env"]
    admin_header           = var.role == "query" ? "x-api-key" : "x-appliance-token"
    admin_secrets          = var.role == "query" ? ["APPLIANCE_ADMIN_KEY", "APPLIANCE_API_KEY"] : ["APPLIANCE_INTERNAL_TOKEN"]
  }
}
