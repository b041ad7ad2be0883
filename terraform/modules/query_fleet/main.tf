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
  role = "query"
}

module "cloud_init" {
  source            = "../cloud_init"
  role              = local.role
  command           = ["serve", "query"]
  region            = data.aws_region.current.name
  appliance_package = var.appliance_package
  pip_index_url     = var.pip_index_url
  settings = merge(var.settings, {
    APPLIANCE_HOST = "0.0.0.0"
    APPLIANCE_PORT = tostring(var.port)
  })
  secret_parameters = {
    APPLIANCE_API_KEY        = var.api_key_parameter
    APPLIANCE_INTERNAL_TOKEN = var.internal_token_parameter
  }
  executor_discovery = {
    autoscaling_group_name = var.executor_autoscaling_group_name
    port                   = var.executor_port
  }
}

# ---- load balancer ----------------------------------------------------------------------------------------

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is an input (waf_web_acl_arn); which rules a deployment needs is the platform team's choice.
  #checkov:skip=CKV2_AWS_76:Same as CKV2_AWS_28: the web ACL (and its Log4j rule set) is supplied through waf_web_acl_arn.
  name                       = substr("${var.name}-query", 0, 32)
  load_balancer_type         = "application"
  internal                   = var.internal
  subnets                    = var.load_balancer_subnet_ids
  security_groups            = [var.load_balancer_security_group_id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  idle_timeout               = 120

  access_logs {
    bucket  = var.access_logs_bucket
    prefix  = "alb"
    enabled = true
  }

  tags = var.tags
}

resource "aws_wafv2_web_acl_association" "this" {
  count        = var.waf_web_acl_arn != null ? 1 : 0
  resource_arn = aws_lb.this.arn
  web_acl_arn  = var.waf_web_acl_arn
}

resource "aws_lb_target_group" "this" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the query nodes serve plain HTTP inside the VPC, reachable from the load balancer's security group only.
  name                 = substr("${var.name}-query", 0, 32)
  port                 = var.port
  protocol             = "HTTP"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    path                = "/readyz"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = var.tags
}

resource "aws_lb_listener" "https" {
  count             = var.certificate_arn != null ? 1 : 0
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = var.tags
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Port 80 redirects to HTTPS whenever certificate_arn is set; without one it serves HTTP, which the README limits to private or test deployments.
  #checkov:skip=CKV_AWS_103:Same listener: TLS settings apply to the HTTPS listener, not to the redirect.
  #checkov:skip=CKV2_AWS_20:The redirect to HTTPS is there when certificate_arn is set (a dynamic block checkov cannot evaluate).
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = var.certificate_arn != null ? "redirect" : "forward"
    target_group_arn = var.certificate_arn != null ? null : aws_lb_target_group.this.arn

    dynamic "redirect" {
      for_each = var.certificate_arn != null ? [1] : []
      content {
        port        = "443"
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }

  tags = var.tags
}

# ---- the fleet ---------------------------------------------------------------------------------------------

resource "aws_autoscaling_group" "this" {
  name                      = "${var.name}-query"
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = var.min_size
  health_check_type         = "ELB" # replaced when /readyz fails, not only when the instance dies
  health_check_grace_period = 600   # the first boot installs the appliance
  target_group_arns         = [aws_lb_target_group.this.arn]
  default_instance_warmup   = 300

  launch_template {
    id      = module.node_template.id
    version = module.node_template.latest_version
  }

  # A new launch template version (a new appliance_package, say) replaces nodes a few at a time.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 90
      instance_warmup        = 300
    }
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = "${var.name}-query" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity] # owned by the scaling policy
  }
}

resource "aws_autoscaling_policy" "cpu" {
  name                   = "${var.name}-query-cpu"
  autoscaling_group_name = aws_autoscaling_group.this.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
    target_value = var.cpu_target_percent
  }
}
