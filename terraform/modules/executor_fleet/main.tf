data "aws_region" "current" {}

module "node_template" {
  source                = "../node_template"
  name                  = var.name
  role                  = local.role
  ami_id                = var.ami_id
  ami_ssm_parameter     = var.ami_ssm_parameter
  instance_type         = var.instance_type
  instance_profile_name = var.instance_profile_name
  security_group_id     = var.security_group_id
  root_volume_size_gb   = var.root_volume_size_gb
  ebs_kms_key_arn       = var.ebs_kms_key_arn
  tags                  = var.tags
  user_data_base64      = module.cloud_init.user_data_base64
}

locals {
  role = "executor"
}

module "cloud_init" {
  source            = "../cloud_init"
  role              = local.role
  command           = ["serve", "executor"]
  region            = data.aws_region.current.name
  appliance_package = var.appliance_package
  pip_index_url     = var.pip_index_url
  settings = merge(var.settings, {
    APPLIANCE_HOST = "0.0.0.0"
    APPLIANCE_PORT = tostring(var.port)
    # task batches over Arrow Flight on port + offset (the network module opens it to the query nodes)
    APPLIANCE_FLIGHT_PORT_OFFSET = tostring(var.flight_port_offset)
    APPLIANCE_EXECUTORS          = "1" # one executor per host: the cache budget is the whole machine's
  })
  secret_parameters = {
    APPLIANCE_INTERNAL_TOKEN = var.internal_token_parameter
  }
  cache_nvme  = true
  cache_mount = var.cache_mount
}

resource "aws_autoscaling_group" "this" {
  name                      = "${var.name}-executor"
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = var.min_size
  health_check_type         = "EC2" # the query nodes probe executors and route around a sick one
  health_check_grace_period = 600
  default_instance_warmup   = 300

  launch_template {
    id      = module.node_template.id
    version = module.node_template.latest_version
  }

  # One executor at a time: each replacement moves 1/N of the cache keys to a cold node.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 150
      instance_warmup        = 300
    }
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = "${var.name}-executor" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

resource "aws_autoscaling_policy" "cpu" {
  name                   = "${var.name}-executor-cpu"
  autoscaling_group_name = aws_autoscaling_group.this.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
    target_value     = var.cpu_target_percent
    disable_scale_in = false
  }
}
