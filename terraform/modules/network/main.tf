# The network: a new VPC (or an existing one) and the security groups between the fleets:
#   clients -> load balancer -> query nodes -> executors; indexers take no inbound traffic.
# Every fleet sends HTTPS out (S3, SQS, SSM, package installs).

locals {
  create   = var.vpc_id == null
  vpc_id   = local.create ? aws_vpc.this[0].id : var.vpc_id
  vpc_cidr = local.create ? aws_vpc.this[0].cidr_block : data.aws_vpc.existing[0].cidr_block
  zones    = length(var.availability_zones) > 0 ? var.availability_zones : slice(data.aws_availability_zones.available.names, 0, var.availability_zone_count)
  # a /16 gives /20 subnets: public ones from the start, private ones from the middle of the range
  public_cidrs  = [for i, _ in local.zones : cidrsubnet(var.cidr_block, 4, i)]
  private_cidrs = [for i, _ in local.zones : cidrsubnet(var.cidr_block, 4, 8 + i)]
}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first availability_zone_count zones are used (names sort a, b, c, ...: a new zone comes last and changes nothing), or exactly the zones named in availability_zones.
  state = "available"
}

data "aws_region" "current" {}

data "aws_vpc" "existing" {
  count = local.create ? 0 : 1
  id    = var.vpc_id
}

# ---- a new VPC ---------------------------------------------------------------------------------------------

resource "aws_vpc" "this" {
  count                = local.create ? 1 : 0
  cidr_block           = var.cidr_block
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(var.tags, { Name = var.name })
}

# No rules: nothing may use the default security group.
resource "aws_default_security_group" "this" {
  count  = local.create ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(var.tags, { Name = "${var.name}-default-unused" })
}

resource "aws_flow_log" "this" {
  count                = local.create && var.flow_logs ? 1 : 0
  vpc_id               = aws_vpc.this[0].id
  traffic_type         = "ALL"
  log_destination_type = "s3"
  log_destination      = var.flow_log_bucket_arn
  tags                 = var.tags

  lifecycle {
    precondition {
      condition     = var.flow_log_bucket_arn != null
      error_message = "flow_logs is true: set flow_log_bucket_arn (or set flow_logs = false)."
    }
  }
}

resource "aws_internet_gateway" "this" {
  count  = local.create ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(var.tags, { Name = var.name })
}

resource "aws_subnet" "public" {
  count                   = local.create ? length(local.zones) : 0
  vpc_id                  = aws_vpc.this[0].id
  availability_zone       = local.zones[count.index]
  cidr_block              = local.public_cidrs[count.index]
  map_public_ip_on_launch = false
  tags                    = merge(var.tags, { Name = "${var.name}-public-${local.zones[count.index]}", Tier = "public" })
}

resource "aws_subnet" "private" {
  count             = local.create ? length(local.zones) : 0
  vpc_id            = aws_vpc.this[0].id
  availability_zone = local.zones[count.index]
  cidr_block        = local.private_cidrs[count.index]
  tags              = merge(var.tags, { Name = "${var.name}-private-${local.zones[count.index]}", Tier = "private" })
}

resource "aws_route_table" "public" {
  count  = local.create ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(var.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_internet" {
  count                  = local.create ? 1 : 0
  route_table_id         = aws_route_table.public[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this[0].id
}

resource "aws_route_table_association" "public" {
  count          = local.create ? length(local.zones) : 0
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_eip" "nat" {
  count  = local.create && var.nat_gateway ? 1 : 0
  domain = "vpc"
  tags   = merge(var.tags, { Name = "${var.name}-nat" })
}

resource "aws_nat_gateway" "this" {
  count         = local.create && var.nat_gateway ? 1 : 0
  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id
  tags          = merge(var.tags, { Name = var.name })
  depends_on    = [aws_internet_gateway.this]
}

resource "aws_route_table" "private" {
  count  = local.create ? 1 : 0
  vpc_id = aws_vpc.this[0].id
  tags   = merge(var.tags, { Name = "${var.name}-private" })
}

resource "aws_route" "private_nat" {
  count                  = local.create && var.nat_gateway ? 1 : 0
  route_table_id         = aws_route_table.private[0].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[0].id
}

resource "aws_route_table_association" "private" {
  count          = local.create ? length(local.zones) : 0
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[0].id
}

# S3 traffic of the fleets stays on the AWS network (and costs no NAT processing).
resource "aws_vpc_endpoint" "s3" {
  count             = local.create ? 1 : 0
  vpc_id            = aws_vpc.this[0].id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private[0].id]
  tags              = merge(var.tags, { Name = "${var.name}-s3" })
}

# ---- security groups -----------------------------------------------------------------------------------------

resource "aws_security_group" "load_balancer" {
  #checkov:skip=CKV2_AWS_5:Attached in the fleet modules (launch templates and the load balancer), which checkov does not follow across module outputs.
  name        = "${var.name}-load-balancer"
  description = "appliance load balancer: listeners from the allowed ranges, out to the query nodes"
  vpc_id      = local.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-load-balancer" })
}

resource "aws_security_group" "query" {
  #checkov:skip=CKV2_AWS_5:Attached in the fleet modules (launch templates and the load balancer), which checkov does not follow across module outputs.
  name        = "${var.name}-query"
  description = "appliance query nodes: from the load balancer, out to the executors and HTTPS"
  vpc_id      = local.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-query" })
}

resource "aws_security_group" "executor" {
  #checkov:skip=CKV2_AWS_5:Attached in the fleet modules (launch templates and the load balancer), which checkov does not follow across module outputs.
  name        = "${var.name}-executor"
  description = "appliance executors: from the query nodes, out to HTTPS"
  vpc_id      = local.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-executor" })
}

resource "aws_security_group" "indexer" {
  #checkov:skip=CKV2_AWS_5:Attached in the fleet modules (launch templates and the load balancer), which checkov does not follow across module outputs.
  name        = "${var.name}-indexer"
  description = "appliance indexers: no inbound traffic, out to HTTPS"
  vpc_id      = local.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-indexer" })
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer" {
  #checkov:skip=CKV_AWS_260:The load balancer is the public entry point; port 80 only redirects to HTTPS when a certificate is set, and the allowed ranges are a required input.
  for_each          = { for pair in setproduct(var.load_balancer_ingress_cidrs, var.load_balancer_ports) : "${pair[0]}:${pair[1]}" => pair }
  security_group_id = aws_security_group.load_balancer.id
  description       = "clients on port ${each.value[1]}"
  cidr_ipv4         = each.value[0]
  ip_protocol       = "tcp"
  from_port         = each.value[1]
  to_port           = each.value[1]
}

resource "aws_vpc_security_group_egress_rule" "load_balancer_to_query" {
  security_group_id            = aws_security_group.load_balancer.id
  description                  = "to the query nodes"
  referenced_security_group_id = aws_security_group.query.id
  ip_protocol                  = "tcp"
  from_port                    = var.query_port
  to_port                      = var.query_port
}

resource "aws_vpc_security_group_ingress_rule" "query_from_load_balancer" {
  security_group_id            = aws_security_group.query.id
  description                  = "from the load balancer (traffic and /readyz health checks)"
  referenced_security_group_id = aws_security_group.load_balancer.id
  ip_protocol                  = "tcp"
  from_port                    = var.query_port
  to_port                      = var.query_port
}

resource "aws_vpc_security_group_egress_rule" "query_to_executor" {
  security_group_id            = aws_security_group.query.id
  description                  = "to the executors"
  referenced_security_group_id = aws_security_group.executor.id
  ip_protocol                  = "tcp"
  from_port                    = var.executor_port
  to_port                      = var.executor_port
}

resource "aws_vpc_security_group_ingress_rule" "executor_from_query" {
  security_group_id            = aws_security_group.executor.id
  description                  = "from the query nodes"
  referenced_security_group_id = aws_security_group.query.id
  ip_protocol                  = "tcp"
  from_port                    = var.executor_port
  to_port                      = var.executor_port
}

# The search hop: task batches over Arrow Flight (gRPC), on the executor's port + flight_port_offset.
resource "aws_vpc_security_group_egress_rule" "query_to_executor_flight" {
  security_group_id            = aws_security_group.query.id
  description                  = "to the executors' Arrow Flight servers"
  referenced_security_group_id = aws_security_group.executor.id
  ip_protocol                  = "tcp"
  from_port                    = var.executor_flight_port
  to_port                      = var.executor_flight_port
}

resource "aws_vpc_security_group_ingress_rule" "executor_flight_from_query" {
  security_group_id            = aws_security_group.executor.id
  description                  = "Arrow Flight task batches from the query nodes"
  referenced_security_group_id = aws_security_group.query.id
  ip_protocol                  = "tcp"
  from_port                    = var.executor_flight_port
  to_port                      = var.executor_flight_port
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = { query = aws_security_group.query.id, executor = aws_security_group.executor.id, indexer = aws_security_group.indexer.id }
  security_group_id = each.value
  description       = "HTTPS out: S3, SQS, SSM and package installs"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# No other egress: the VPC resolver (DNS), the instance metadata service and the time service are not
# filtered by security groups.
