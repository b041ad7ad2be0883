# A whole appliance fleet on this machine: `terraform apply` starts `appliance up` (a query node, the
# executors and whatever else `appliance up` supervises) in the background and waits until it is ready;
# `terraform destroy` stops it. Only Terraform's built-in terraform_data resource is used, so no provider
# is downloaded. With managed_by = "ansible" nothing is started: the outputs describe the nodes for
# ansible/ (inventory/terraform_inventory.py), whose site.yml installs and starts them one process each.

locals {
  repo_root     = abspath("${path.module}/../../..")
  state_dir     = var.state_dir != "" ? abspath(var.state_dir) : abspath("${path.module}/.fleet")
  appliance_bin = var.appliance_bin != "" ? var.appliance_bin : (fileexists("${local.repo_root}/.venv/bin/appliance") ? "${local.repo_root}/.venv/bin/appliance" : "appliance")
  data          = var.data != "" ? var.data : "${local.state_dir}/data"
  executor_base = var.executor_base_port != 0 ? var.executor_base_port : var.port + 1
  address       = var.host == "0.0.0.0" ? "127.0.0.1" : var.host
  url           = "http://${local.address}:${var.port}"
  pidfile       = "${local.state_dir}/appliance.pid"
  restarts_file = "${local.state_dir}/restarts"

  # Did the fleet die since the last apply? Read at every plan: a pidfile whose process is gone (or is not
  # an appliance process any more) means it did. Terraform has no refresh for terraform_data, so the count
  # of such restarts is a trigger: the plan replaces the fleet (stop cleans up, start brings it back) and
  # fleet.sh records the count it was started with, which the next plans read back (no change while it
  # runs). Where there is no /proc (macOS), a dead fleet goes unnoticed until `terraform apply -replace`.
  recorded_pid = try(trimspace(file(local.pidfile)), "")
  fleet_died = (local.recorded_pid != "" && fileexists("/proc/self/cmdline")
  && !strcontains(try(file("/proc/${local.recorded_pid}/cmdline"), ""), "appliance"))
  restarts = try(tonumber(trimspace(file(local.restarts_file))), 0) + (local.fleet_died ? 1 : 0)

  # The nodes, as ansible/inventory/terraform_inventory.py reads them (`appliance up` runs the same ones).
  query_nodes    = [{ name = "query-0", address = local.address, port = var.port }]
  executor_nodes = [for i in range(var.executors) : { name = "executor-${i}", address = local.address, port = local.executor_base + i }]
  nodes_root     = "${local.state_dir}/nodes"
  # A local Ansible fleet's releases import their dependencies from this checkout's virtual environment
  # (common_shared_site_packages) and install only the appliance's wheel; empty where there is none.
  site_packages = try("${local.repo_root}/.venv/lib/${dirname(tolist(fileset("${local.repo_root}/.venv/lib", "python3*/site-packages/__editable__*vector_appliance*.pth"))[0])}", "")
}

# The API key: the one given, else one generated once and kept (ignore_changes stops uuid() from
# changing it at every plan).
resource "terraform_data" "api_key" {
  input = var.api_key != "" ? var.api_key : "sk-${replace(uuid(), "-", "")}"

  lifecycle {
    ignore_changes = [input]
  }
}

# The secret the nodes share for their internal calls, for an Ansible-managed fleet (`appliance up`
# makes its own).
resource "terraform_data" "internal_token" {
  input = "it-${replace(uuid(), "-", "")}"

  lifecycle {
    ignore_changes = [input]
  }
}

moved {
  from = terraform_data.fleet
  to   = terraform_data.fleet[0]
}

# How many times a plan found the fleet dead (local.restarts): a change replaces the fleet, and the plan
# shows this resource's input going up as the reason.
resource "terraform_data" "restarts" {
  count = var.managed_by == "terraform" ? 1 : 0
  input = local.restarts
}

resource "terraform_data" "fleet" {
  count = var.managed_by == "terraform" ? 1 : 0

  lifecycle {
    replace_triggered_by = [terraform_data.restarts[count.index]]
  }

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
    pidfile = local.pidfile
    script  = abspath("${path.module}/scripts/fleet.sh")
    data    = local.data
  }

  provisioner "local-exec" {
    command = "sh '${abspath("${path.module}/scripts/fleet.sh")}' start"
    environment = merge(var.environment, {
      FLEET_STATE_DIR              = local.state_dir
      FLEET_APPLIANCE_BIN          = local.appliance_bin
      FLEET_URL                    = local.url
      FLEET_TIMEOUT                = tostring(var.startup_timeout_seconds)
      FLEET_RESTARTS               = tostring(local.restarts)
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
      FLEET_DATA    = self.input.data
    }
  }
}

# managed_by = "ansible": Terraform starts nothing, but destroy stops the nodes Ansible started (each
# node's bin/appliance-ctl under nodes_root) and says what stays on disk.
resource "terraform_data" "ansible_nodes" {
  count = var.managed_by == "ansible" ? 1 : 0

  input = {
    root = local.nodes_root
    data = local.data
  }

  provisioner "local-exec" {
    when    = destroy
    command = <<-EOT
      for ctl in '${self.input.root}'/*/bin/appliance-ctl; do
        [ -x "$ctl" ] && "$ctl" stop
      done
      echo "left in place: the nodes' folders under ${self.input.root} and the tables in ${self.input.data} (delete them to start afresh)"
    EOT
  }
}
