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
  role = "indexer"
}

module "cloud_init" {
  source            = "../cloud_init"
  role              = local.role
  command           = ["indexer"]
  region            = data.aws_region.current.name
  appliance_package = var.appliance_package
  pip_index_url     = var.pip_index_url
  settings          = var.settings
  secret_parameters = {
    APPLIANCE_INTERNAL_TOKEN = var.internal_token_parameter
  }
  gpu = var.gpu
}

resource "aws_autoscaling_group" "this" {
  name                      = "${var.name}-indexer"
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = 0
  max_size                  = var.max_size
  desired_capacity          = 0
  health_check_type         = "EC2"
  health_check_grace_period = 900

  launch_template {
    id      = module.node_template.id
    version = module.node_template.latest_version
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = "${var.name}-indexer" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity] # owned by the queue-depth alarms
  }
}

# ---- scale on queue depth, back to 0 when idle -------------------------------------------------------------

# Backlog of N waiting events: ceil(N / events_per_indexer) indexers, at most max_size.
resource "aws_autoscaling_policy" "scale_out" {
  name                      = "${var.name}-indexer-backlog"
  autoscaling_group_name    = aws_autoscaling_group.this.name
  policy_type               = "StepScaling"
  adjustment_type           = "ExactCapacity"
  metric_aggregation_type   = "Maximum"
  estimated_instance_warmup = 600

  # Bounds are relative to the alarm threshold (1 waiting event).
  dynamic "step_adjustment" {
    for_each = range(var.max_size)
    content {
      metric_interval_lower_bound = step_adjustment.value * var.events_per_indexer
      metric_interval_upper_bound = step_adjustment.value == var.max_size - 1 ? null : (step_adjustment.value + 1) * var.events_per_indexer
      scaling_adjustment          = step_adjustment.value + 1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "backlog" {
  alarm_name          = "${var.name}-indexer-backlog"
  alarm_description   = "Events wait in ${var.queue_name}: run indexers"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = var.queue_name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_autoscaling_policy.scale_out.arn]
  tags                = var.tags
}

resource "aws_autoscaling_policy" "scale_in" {
  name                   = "${var.name}-indexer-idle"
  autoscaling_group_name = aws_autoscaling_group.this.name
  policy_type            = "SimpleScaling"
  adjustment_type        = "ExactCapacity"
  scaling_adjustment     = 0
  cooldown               = 300
}

# Idle: nothing waiting and nothing in flight (an indexer at work holds its event invisible) for
# idle_minutes, so scaling in never interrupts a build.
resource "aws_cloudwatch_metric_alarm" "idle" {
  alarm_name          = "${var.name}-indexer-idle"
  alarm_description   = "${var.queue_name} has been empty for ${var.idle_minutes} minutes: stop the indexers"
  evaluation_periods  = var.idle_minutes
  threshold           = 0
  comparison_operator = "LessThanOrEqualToThreshold"
  treat_missing_data  = "breaching" # SQS stops reporting an idle queue's metrics
  alarm_actions       = [aws_autoscaling_policy.scale_in.arn]
  tags                = var.tags

  metric_query {
    id          = "events"
    expression  = "visible + in_flight"
    label       = "events waiting or in flight"
    return_data = true
  }

  metric_query {
    id = "visible"
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesVisible"
      dimensions  = { QueueName = var.queue_name }
      stat        = "Maximum"
      period      = 60
    }
  }

  metric_query {
    id = "in_flight"
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesNotVisible"
      dimensions  = { QueueName = var.queue_name }
      stat        = "Maximum"
      period      = 60
    }
  }
}
