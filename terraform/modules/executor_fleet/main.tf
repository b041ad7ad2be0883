# The plan executors: an autoscaling group (modules/node_group) of NVMe instances whose cache lives on the
# instance store. A terminating executor drains (its lifecycle agent) before it goes.

locals {
  # Defaults of this fleet; var.fleet overrides any of them.
  fleet = merge({
    instance_type      = "i4i.xlarge"
    min_size           = 2
    max_size           = 8
    cpu_target_percent = 70
    drain_seconds      = 120
    # One executor at a time where the group is small: each replacement moves 1/N of the cache keys to a
    # cold node.
    min_healthy_percentage = 100
    max_healthy_percentage = 150
  }, var.fleet)
}

module "node_group" {
  source = "../node_group"
  host   = var.host
  node = {
    role          = "executor"
    command       = ["serve", "executor"]
    instance_type = local.fleet.instance_type
    port          = var.port
    settings = {
      APPLIANCE_HOST = "0.0.0.0"
      APPLIANCE_PORT = tostring(var.port)
      # task batches over Arrow Flight on port + offset (the network module opens it to the query nodes)
      APPLIANCE_FLIGHT_PORT_OFFSET = tostring(var.flight_port_offset)
      APPLIANCE_EXECUTORS          = "1" # one executor per host: the cache budget is the whole machine's
    }
    cache_mount = var.cache_mount
  }
  group = {
    min_size               = local.fleet.min_size
    max_size               = local.fleet.max_size
    health_check_type      = "EC2" # the query nodes probe executors and route around a sick one
    cpu_target_percent     = local.fleet.cpu_target_percent
    min_healthy_percentage = local.fleet.min_healthy_percentage
    max_healthy_percentage = local.fleet.max_healthy_percentage
    drain_seconds          = local.fleet.drain_seconds
  }
}

# ---- state moved with the shared node_group module ----------------------------------------------------------

moved {
  from = module.node_template.aws_launch_template.this
  to   = module.node_group.aws_launch_template.this
}

moved {
  from = aws_autoscaling_group.this
  to   = module.node_group.aws_autoscaling_group.this
}

moved {
  from = aws_autoscaling_policy.cpu
  to   = module.node_group.aws_autoscaling_policy.cpu[0]
}
