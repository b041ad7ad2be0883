# The indexers: a GPU autoscaling group (modules/node_group) of 0..max_size hosts, scaled on the event queue's
# depth and back to 0 when idle. A terminating indexer stops its service (the event in hand goes back to the
# queue at once) before it goes.

locals {
  # Defaults of this fleet; var.fleet overrides any of them.
  fleet = merge({
    instance_type     = "g5.xlarge"
    gpu               = true
    ami_ssm_parameter = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
    max_size          = 2
    drain_seconds     = 60
  }, var.fleet)
}

module "node_group" {
  source = "../node_group"
  host   = var.host
  node = {
    role              = "indexer"
    command           = ["indexer"]
    instance_type     = local.fleet.instance_type
    ami_ssm_parameter = local.fleet.ami_ssm_parameter
    gpu               = local.fleet.gpu
  }
  group = {
    min_size                  = 0
    max_size                  = local.fleet.max_size
    health_check_grace_period = 900
    # Launch before terminate: a replacement takes new events while the old one hands its event back.
    max_healthy_percentage = 200
    drain_seconds          = local.fleet.drain_seconds
  }
}

# ---- scale on queue depth, back to 0 when idle -------------------------------------------------------------

# Backlog of N waiting events: ceil(N / events_per_indexer) indexers, at most max_size.
resource "aws_autoscaling_policy" "scale_out" {
  name                      = "${var.host.name}-indexer-backlog"
  autoscaling_group_name    = module.node_group.autoscaling_group_name
  policy_type               = "StepScaling"
  adjustment_type           = "ExactCapacity"
  metric_aggregation_type   = "Maximum"
  estimated_instance_warmup = 600

  # Bounds are relative to the alarm threshold (1 waiting event).
  dynamic "step_adjustment" {
    for_each = range(local.fleet.max_size)
    content {
      metric_interval_lower_bound = step_adjustment.value * var.events_per_indexer
      metric_interval_upper_bound = step_adjustment.value == local.fleet.max_size - 1 ? null : (step_adjustment.value + 1) * var.events_per_indexer
      scaling_adjustment          = step_adjustment.value + 1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "backlog" {
  alarm_name          = "${var.host.name}-indexer-backlog"
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
  tags                = try(var.host.tags, {})
}

resource "aws_autoscaling_policy" "scale_in" {
  name                   = "${var.host.name}-indexer-idle"
  autoscaling_group_name = module.node_group.autoscaling_group_name
  policy_type            = "SimpleScaling"
  adjustment_type        = "ExactCapacity"
  scaling_adjustment     = 0
  cooldown               = 300
}

# Idle: nothing waiting and nothing in flight (an indexer at work holds its event invisible) for
# idle_minutes, so scaling in never interrupts a build.
resource "aws_cloudwatch_metric_alarm" "idle" {
  alarm_name          = "${var.host.name}-indexer-idle"
  alarm_description   = "${var.queue_name} has been empty for ${var.idle_minutes} minutes: stop the indexers"
  evaluation_periods  = var.idle_minutes
  threshold           = 0
  comparison_operator = "LessThanOrEqualToThreshold"
  treat_missing_data  = "breaching" # SQS stops reporting an idle queue's metrics
  alarm_actions       = [aws_autoscaling_policy.scale_in.arn]
  tags                = try(var.host.tags, {})

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

# ---- state moved with the shared node_group module ----------------------------------------------------------

moved {
  from = module.node_template.aws_launch_template.this
  to   = module.node_group.aws_launch_template.this
}

moved {
  from = aws_autoscaling_group.this
  to   = module.node_group.aws_autoscaling_group.this
}
