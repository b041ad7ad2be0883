# A whole appliance fleet on this machine: `terraform apply` starts `appliance up` (a query node, the
# executors and whatever else `appliance up` supervises) in the background and waits until it is ready;
# `terraform destroy` stops it. Only Terraform's built-in terraform_data resource is used, so no provider
# is downloaded.

locals {
  repo_root     = abspath("${path.module}/../../..")
  state_dir     = var.state_dir != "" ? abspath(var.state_dir) : abspath("${path.module}/.fleet")
  appliance_bin = var.appliance_bin != "" ? var.appliance_bin : (fileexists("${local.repo_root}/.venv/bin/appliance") ? "${local.repo_root}/.venv/bin/appliance" : "appliance")
  data          = var.data != "" ? var.data : "${local.state_dir}/data"
  executor_base = var.executor_base_port != 0 ? var.executor_base_port : var.port + 1
  url           = "http://${var.host == "0.0.0.0" ? "127.0.0.1" : var.host}:${var.port}"
}

# The API key: the one given, else one generated once and kept (ignore_changes stops uuid() from
# changing it at every plan).
resource "terraform_data" "api_key" {
  input = var.api_key != "" ? var.api_key : "sk-${replace(uuid(), "-", "")}"

  lifecycle {
    ignore_changes = [input]
  }
}

resource "terraform_data" "fleet" {
  # Any change of these restarts the fleet (destroy, then create).
  triggers_replace = {
    appliance_bin = local.appliance_bin
    data          = local.data
    host          = var.host
    port          = var.port
    executors     = var.executors
    executor_base = local.executor_base
    environment   = var.environment
    api_key_hash  = sha256(terraform_data.api_key.output)
  }

  # What the destroy-time provisioner needs: it may only read self.
  input = {
    pidfile = "${local.state_dir}/appliance.pid"
    script  = abspath("${path.module}/scripts/fleet.sh")
  }

  provisioner "local-exec" {
    command = "sh '${abspath("${path.module}/scripts/fleet.sh")}' start"
    environment = merge(var.environment, {
      FLEET_STATE_DIR              = local.state_dir
      FLEET_APPLIANCE_BIN          = local.appliance_bin
      FLEET_URL                    = local.url
      FLEET_TIMEOUT                = tostring(var.startup_timeout_seconds)
      APPLIANCE_DATA               = local.data
      APPLIANCE_HOST               = var.host
      APPLIANCE_PORT               = tostring(var.port)
      APPLIANCE_EXECUTORS          = tostring(var.executors)
      APPLIANCE_EXECUTOR_BASE_PORT = tostring(local.executor_base)
      APPLIANCE_API_KEY            = terraform_data.api_key.output
      APPLIANCE_STARTUP_TIMEOUT    = tostring(var.startup_timeout_seconds)
    })
  }

  provisioner "local-exec" {
    when    = destroy
    command = "sh '${self.input.script}' stop"
    environment = {
      FLEET_PIDFILE = self.input.pidfile
    }
  }
}
