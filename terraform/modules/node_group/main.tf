# One fleet's hosts: the launch template (AMI, IMDSv2, encrypted root volume, cloud-init), the autoscaling
# group that runs them, the termination lifecycle hook that lets a node drain before it goes, and a rolling
# instance refresh that honours the hook. The three fleets differ only in what they pass in `node` and `group`.

data "aws_region" "current" {}

locals {
  role   = var.node.role
  name   = "${var.host.name}-${var.node.role}"
  ami_id = lookup(var.host.ami_ids, var.node.role, null)
  tags   = merge(var.host.tags, { Name = local.name, "appliance:role" = var.node.role })
  # The agent on each node (appliance-lifecycle, see cloud_init) drains for up to drain_seconds, after
  # leaving the load balancer (deregistration delay, 30 s) on query nodes: the hook waits that long and more.
  hook_timeout = var.group.drain_seconds + 120
}

data "aws_ssm_parameter" "ami" {
  count = local.ami_id == null ? 1 : 0
  name  = var.node.ami_ssm_parameter
}

module "cloud_init" {
  source             = "../cloud_init"
  role               = local.role
  command            = var.node.command
  region             = data.aws_region.current.name
  appliance_package  = var.host.appliance_package
  release_parameter  = var.host.release_parameter
  pip_index_url      = var.host.pip_index_url
  settings           = merge(var.host.settings, var.node.settings)
  secret_parameters  = merge({ APPLIANCE_INTERNAL_TOKEN = var.host.internal_token_parameter }, var.node.secret_parameters)
  cache_nvme         = var.node.cache_mount != null
  cache_mount        = coalesce(var.node.cache_mount, "/mnt/appliance-cache")
  executor_discovery = var.node.executor_discovery
  gpu                = var.node.gpu
  lifecycle_hook = {
    name                   = "drain"
    autoscaling_group_name = local.name # known at plan time, so the user data is too
    drain_seconds          = var.group.drain_seconds
    port                   = var.node.port
    target_group_name      = var.node.target_group_name
  }
}

resource "aws_launch_template" "this" {
  name_prefix            = "${local.name}-"
  description            = "appliance ${local.role} node"
  image_id               = local.ami_id != null ? local.ami_id : nonsensitive(data.aws_ssm_parameter.ami[0].value)
  instance_type          = var.node.instance_type
  update_default_version = true
  user_data              = module.cloud_init.user_data_base64
  ebs_optimized          = true

  iam_instance_profile {
    name = var.host.instance_profile_names[local.role]
  }

  network_interfaces {
    associate_public_ip_address = false
    security_groups             = [var.host.security_group_ids[local.role]]
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
      volume_size           = var.host.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.host.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = local.tags
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = var.host.tags
}

resource "aws_autoscaling_group" "this" {
  name                      = local.name
  vpc_zone_identifier       = var.host.subnet_ids
  min_size                  = var.group.min_size
  max_size                  = var.group.max_size
  desired_capacity          = var.group.min_size
  health_check_type         = var.group.health_check_type
  health_check_grace_period = var.group.health_check_grace_period # the first boot installs the appliance
  target_group_arns         = var.group.target_group_arns
  default_instance_warmup   = var.group.warmup_seconds

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # A new launch template version (AMI, instance type, user data) replaces nodes gradually: new ones launch
  # first (max_healthy_percentage), min_healthy_percentage stay in service, and each old node goes through
  # the termination hook below, so it leaves the load balancer and drains before it terminates.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage       = var.group.min_healthy_percentage
      max_healthy_percentage       = var.group.max_healthy_percentage
      instance_warmup              = var.group.warmup_seconds
      skip_matching                = true
      scale_in_protected_instances = "Wait"
      standby_instances            = "Wait"
    }
  }

  dynamic "tag" {
    for_each = merge(var.host.tags, { Name = local.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity] # owned by the scaling policies
  }
}

# Every termination (scale-in, instance refresh, health replacement) waits in Terminating:Wait until the
# node's agent has drained it and completed the action, or hook_timeout passes (then it terminates anyway).
resource "aws_autoscaling_lifecycle_hook" "drain" {
  name                   = "drain"
  autoscaling_group_name = aws_autoscaling_group.this.name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  heartbeat_timeout      = local.hook_timeout
  default_result         = "CONTINUE"
}

resource "aws_autoscaling_policy" "cpu" {
  count                  = var.group.cpu_target_percent == null ? 0 : 1
  name                   = "${local.name}-cpu"
  autoscaling_group_name = aws_autoscaling_group.this.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
    target_value = var.group.cpu_target_percent
  }
}
