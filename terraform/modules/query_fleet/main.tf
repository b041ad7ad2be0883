# The query nodes: an autoscaling group (modules/node_group) behind an application load balancer whose target
# group health-checks /readyz. A terminating node leaves the target group, then drains (its lifecycle agent).

locals {
  # Defaults of this fleet; var.fleet overrides any of them.
  fleet = merge({
    instance_type          = "c7i.xlarge"
    min_size               = 2
    max_size               = 6
    cpu_target_percent     = 60
    drain_seconds          = 60
    min_healthy_percentage = 100
    max_healthy_percentage = 150
  }, var.fleet)
  tags              = try(var.host.tags, {})
  target_group_name = substr("${var.host.name}-query", 0, 32)
  # The target group's health check: a drained node answers /readyz 503, and the load balancer stops
  # sending it clients after unhealthy_threshold failed checks, interval_seconds apart.
  health_check                 = { interval_seconds = 10, timeout_seconds = 5, healthy_threshold = 2, unhealthy_threshold = 2 }
  deregistration_delay_seconds = 30
}

module "node_group" {
  source = "../node_group"
  host   = var.host
  node = {
    role              = "query"
    command           = ["serve", "query"]
    instance_type     = local.fleet.instance_type
    port              = var.port
    settings          = { APPLIANCE_HOST = "0.0.0.0", APPLIANCE_PORT = tostring(var.port) }
    secret_parameters = { APPLIANCE_API_KEY = var.api_key_parameter }
    executor_discovery = {
      autoscaling_group_name = var.executor_autoscaling_group_name
      port                   = var.executor_port
    }
    target_group_name = local.target_group_name
  }
  group = {
    min_size                  = local.fleet.min_size
    max_size                  = local.fleet.max_size
    health_check_type         = "ELB" # replaced when /readyz fails, not only when the instance dies
    health_check_grace_period = 600   # the first boot installs the appliance
    target_group_arns         = [aws_lb_target_group.this.arn]
    cpu_target_percent        = local.fleet.cpu_target_percent
    min_healthy_percentage    = local.fleet.min_healthy_percentage
    max_healthy_percentage    = local.fleet.max_healthy_percentage
    drain_seconds             = local.fleet.drain_seconds
  }
}

# ---- load balancer ----------------------------------------------------------------------------------------

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is an input (waf_web_acl_arn); which rules a deployment needs is the platform team's choice.
  #checkov:skip=CKV2_AWS_76:Same as CKV2_AWS_28: the web ACL (and its Log4j rule set) is supplied through waf_web_acl_arn.
  name                       = local.target_group_name
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

  tags = local.tags
}

resource "aws_wafv2_web_acl_association" "this" {
  count        = var.waf_web_acl_arn != null ? 1 : 0
  resource_arn = aws_lb.this.arn
  web_acl_arn  = var.waf_web_acl_arn
}

resource "aws_lb_target_group" "this" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the query nodes serve plain HTTP inside the VPC, reachable from the load balancer's security group only.
  name                 = local.target_group_name
  port                 = var.port
  protocol             = "HTTP"
  vpc_id               = var.vpc_id
  deregistration_delay = local.deregistration_delay_seconds

  health_check {
    path                = "/readyz"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = local.health_check.interval_seconds
    timeout             = local.health_check.timeout_seconds
    healthy_threshold   = local.health_check.healthy_threshold
    unhealthy_threshold = local.health_check.unhealthy_threshold
  }

  tags = local.tags
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

  tags = local.tags
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

  tags = local.tags
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
