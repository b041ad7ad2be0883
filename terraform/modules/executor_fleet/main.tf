data "aws_region" "current" {}

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0
  name  = var.ami_ssm_parameter
}

resource "aws_launch_template" "this" {
  name_prefix            = "${var.name}-${local.role}-"
  description            = "appliance ${local.role} node"
  image_id               = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.ami[0].value)
  instance_type          = var.instance_type
  update_default_version = true
  user_data              = module.cloud_init.user_data_base64
  ebs_optimized          = true

  iam_instance_profile {
    name = var.instance_profile_name
  }

  network_interfaces {
    associate_public_ip_address = false
    security_groups             = [var.security_group_id]
    delete_on_termination       = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-${local.role}", "appliance:role" = local.role })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-${local.role}", "appliance:role" = local.role })
  }

  tags = var.tags
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
    APPLIANCE_HOST      = "0.0.0.0"
    APPLIANCE_PORT      = tostring(var.port)
    APPLIANCE_EXECUTORS = "1" # one executor per host: the cache budget is the whole machine's
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
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
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
