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
  source                       = "../../modules/iam"
  name                         = var.name
  bucket_arn                   = module.storage.bucket_arn
  kms_key_arn                  = module.storage.kms_key_arn
  queue_arns                   = [module.queue.queue_arn, module.queue.dead_letter_queue_arn]
  api_key_parameter_arn        = aws_ssm_parameter.api_key.arn
  internal_token_parameter_arn = aws_ssm_parameter.internal_token.arn
  permissions_boundary_arn     = var.permissions_boundary_arn
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

module "executor_fleet" {
  source                   = "../../modules/executor_fleet"
  name                     = var.name
  ami_id                   = lookup(var.ami_ids, "executor", null)
  instance_type            = var.executor_instance_type
  min_size                 = var.executor_min_size
  max_size                 = var.executor_max_size
  subnet_ids               = module.network.private_subnet_ids
  security_group_id        = module.network.security_group_ids.executor
  instance_profile_name    = module.iam.instance_profile_names.executor
  appliance_package        = var.appliance_package
  pip_index_url            = var.pip_index_url
  settings                 = local.settings
  internal_token_parameter = aws_ssm_parameter.internal_token.name
}

module "query_fleet" {
  source                          = "../../modules/query_fleet"
  name                            = var.name
  ami_id                          = lookup(var.ami_ids, "query", null)
  instance_type                   = var.query_instance_type
  min_size                        = var.query_min_size
  max_size                        = var.query_max_size
  vpc_id                          = module.network.vpc_id
  subnet_ids                      = module.network.private_subnet_ids
  security_group_id               = module.network.security_group_ids.query
  load_balancer_subnet_ids        = module.network.public_subnet_ids
  load_balancer_security_group_id = module.network.security_group_ids.load_balancer
  internal                        = var.internal_load_balancer
  certificate_arn                 = var.certificate_arn
  waf_web_acl_arn                 = var.waf_web_acl_arn
  access_logs_bucket              = module.storage.logs_bucket_name
  deletion_protection             = var.deletion_protection
  instance_profile_name           = module.iam.instance_profile_names.query
  appliance_package               = var.appliance_package
  pip_index_url                   = var.pip_index_url
  settings                        = local.settings
  api_key_parameter               = aws_ssm_parameter.api_key.name
  internal_token_parameter        = aws_ssm_parameter.internal_token.name
  executor_autoscaling_group_name = module.executor_fleet.autoscaling_group_name
  executor_port                   = module.executor_fleet.port
}

module "indexer_fleet" {
  source                   = "../../modules/indexer_fleet"
  name                     = var.name
  ami_id                   = lookup(var.ami_ids, "indexer", null)
  instance_type            = var.indexer_instance_type
  gpu                      = var.indexer_gpu
  max_size                 = var.indexer_max_size
  subnet_ids               = module.network.private_subnet_ids
  security_group_id        = module.network.security_group_ids.indexer
  instance_profile_name    = module.iam.instance_profile_names.indexer
  appliance_package        = var.appliance_package
  pip_index_url            = var.pip_index_url
  settings                 = local.settings
  internal_token_parameter = aws_ssm_parameter.internal_token.name
  queue_name               = module.queue.queue_name
}
