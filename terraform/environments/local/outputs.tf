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
  description = "File holding the pid of the `appliance up` supervisor (null when managed_by = \"ansible\")."
  value       = one(terraform_data.fleet[*].input.pidfile)
}

output "log_file" {
  description = "Log of the `appliance up` supervisor and its nodes."
  value       = "${local.state_dir}/appliance.log"
}

output "data" {
  description = "Storage root the fleet serves from: its tables. `terraform destroy` leaves it in place (delete it to start afresh)."
  value       = local.data
}

# What ansible/inventory/terraform_inventory.py reads (`terraform output -json > tf-outputs.json`).

output "query_nodes" {
  description = "The query nodes, [{name, address, port}] (for the Ansible inventory)."
  value       = local.query_nodes
}

output "executor_nodes" {
  description = "The executors, [{name, address, port}] (for the Ansible inventory)."
  value       = local.executor_nodes
}

output "data_uri" {
  description = "Storage root every node shares (the Ansible inventory's common_data)."
  value       = local.data
}

output "local_root" {
  description = "The nodes run on this machine, each in its own folder local_root/<name> (the inventory's --local)."
  value       = local.nodes_root
}

output "local_python" {
  description = "The Python Ansible runs its modules with and creates each release's virtual environment from (the inventory's --python)."
  value       = fileexists("${local.repo_root}/.venv/bin/python") ? "${local.repo_root}/.venv/bin/python" : "python3"
}

output "ansible_vars" {
  description = "Extra variables for the playbooks (`terraform output -json ansible_vars > vault.json`, then `-e @vault.json`): the secrets, and the one-machine shortcut of releases that share this checkout's dependencies."
  sensitive   = true
  value = merge({
    common_api_key        = terraform_data.api_key.output
    common_internal_token = terraform_data.internal_token.output
    }, local.site_packages == "" ? {} : {
    common_shared_site_packages = local.site_packages
    common_venv_args            = "--without-pip"
    common_pip_extra_args       = "--no-deps --no-index --ignore-installed"
  })
}
