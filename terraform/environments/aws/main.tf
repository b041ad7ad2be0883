# The appliance on AWS: storage and queue, network, IAM, then the three fleets.
#
#   clients -> ALB (/readyz health checks) -> query nodes (ASG) -> executors (ASG, NVMe cache)
#                                                |   \-> SQS FIFO event queue -> indexers (ASG, GPU, 0..N)
#                                                 \---------- S3 data bucket (KMS) ----------/

module "storage" {
  source        = "../../modules/storage"
  name          = var.name
  force_destroy = var.force_destroy
}

module "queue" {
  source = "../../modules/queue"
  name   = var.name
}

module "network" {
  source                      = "../../modules/network"
  name                        = var.name
  vpc_id                      = var.vpc_id
  public_subnet_ids           = var.public_subnet_ids
  private_subnet_ids          = var.private_subnet_ids
  cidr_block                  = var.vpc_cidr_block
  flow_log_bucket_arn         = module.storage.logs_bucket_arn
  load_balancer_ingress_cidrs = var.load_balancer_ingress_cidrs
  load_balancer_ports         = var.certificate_arn != null ? [80, 443] : [80]
}

# ---- secrets: the clients' API key and the query/executor token, in SSM Parameter Store ---------------------

data "aws_secretsmanager_random_password" "api_key" {
  password_length     = 40
  exclude_punctuation = true
}

data "aws_secretsmanager_random_password" "internal_token" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_ssm_parameter" "api_key" {
  name        = "/${var.name}/api-key"
  description = "appliance: API key clients send in x-api-key"
  type        = "SecureString"
  key_id      = module.storage.kms_key_arn
  value       = var.api_key != null ? var.api_key : "sk-${data.aws_secretsmanager_random_password.api_key.random_password}"

  lifecycle {
    ignore_changes = [value] # generated once; rotate with `aws ssm put-parameter` and restart the query nodes
  }
}

# The release every host installs at first boot: appliance_package at the first apply, then whatever the
# upgrade play (ansible/) installed last; it writes this parameter after each rolling upgrade, so a
# replacement or a scale-out never brings an older release back (terraform/README.md, "Upgrades").
resource "aws_ssm_parameter" "release" {
  #checkov:skip=CKV2_AWS_34:A release such as vector-appliance==0.2.0 is no secret; a plain String lets the upgrade play overwrite it without naming a KMS key.
  name        = "/${var.name}/release"
  description = "appliance: the release hosts install (a pip requirement or wheel URL)"
  type        = "String"
  value       = var.appliance_package

  lifecycle {
    ignore_changes = [value] # the upgrade play owns it after the first apply
  }
}

resource "aws_ssm_parameter" "internal_token" {
  name        = "/${var.name}/internal-token"
  description = "appliance: shared secret between query nodes and executors"
  type        = "SecureString"
  key_id      = module.storage.kms_key_arn
  value       = data.aws_secretsmanager_random_password.internal_token.random_password

  lifecycle {
    ignore_changes = [value]
  }
}

module "iam" {
  source      = "../../modules/iam"
  name        = var.name
  bucket_arn  = module.storage.bucket_arn
  kms_key_arn = module.storage.kms_key_arn
  queue_arns  = [module.queue.queue_arn, module.queue.dead_letter_queue_arn]
  parameter_arns = {
    api_key        = aws_ssm_parameter.api_key.arn
    internal_token = aws_ssm_parameter.internal_token.arn
    release        = aws_ssm_parameter.release.arn
  }
  permissions_boundary_arn = var.permissions_boundary_arn
}

# ---- fleets --------------------------------------------------------------------------------------------------

locals {
  # Every node agrees on the storage root and the event queue.
  settings = merge({
    APPLIANCE_DATA                     = module.storage.data_uri
    APPLIANCE_EVENTS                   = "${module.queue.events_setting}?region=${var.region}"
    APPLIANCE_EVENT_VISIBILITY_TIMEOUT = tostring(module.queue.visibility_timeout_seconds)
    APPLIANCE_EVENT_MAX_RECEIVES       = tostring(module.queue.max_receive_count)
    APPLIANCE_LOG_LEVEL                = "info"
  }, var.settings)
}

locals {
  # What every host shares, built once and handed to the three fleets (modules/node_group validates it).
  host = {
    name                     = var.name
    subnet_ids               = module.network.private_subnet_ids
    security_group_ids       = module.network.security_group_ids
    instance_profile_names   = module.iam.instance_profile_names
    ami_ids                  = var.ami_ids
    appliance_package        = var.appliance_package
    release_parameter        = aws_ssm_parameter.release.name
    pip_index_url            = var.pip_index_url
    settings                 = local.settings
    internal_token_parameter = aws_ssm_parameter.internal_token.name
    tags                     = {} # the provider's default_tags tag everything
  }
}

module "executor_fleet" {
  source = "../../modules/executor_fleet"
  host   = local.host
  fleet = {
    instance_type = var.executor_instance_type
    min_size      = var.executor_min_size
    max_size      = var.executor_max_size
  }
}

module "query_fleet" {
  source = "../../modules/query_fleet"
  host   = local.host
  fleet = {
    instance_type = var.query_instance_type
    min_size      = var.query_min_size
    max_size      = var.query_max_size
  }
  vpc_id                          = module.network.vpc_id
  load_balancer_subnet_ids        = module.network.public_subnet_ids
  load_balancer_security_group_id = module.network.security_group_ids.load_balancer
  internal                        = var.internal_load_balancer
  certificate_arn                 = var.certificate_arn
  waf_web_acl_arn                 = var.waf_web_acl_arn
  access_logs_bucket              = module.storage.logs_bucket_name
  deletion_protection             = var.deletion_protection
  api_key_parameter               = aws_ssm_parameter.api_key.name
  executor_autoscaling_group_name = module.executor_fleet.autoscaling_group_name
  executor_port                   = module.executor_fleet.port
}

module "indexer_fleet" {
  source = "../../modules/indexer_fleet"
  host   = local.host
  fleet = {
    instance_type = var.indexer_instance_type
    gpu           = var.indexer_gpu
    max_size      = var.indexer_max_size
  }
  queue_name = module.queue.queue_name
}
