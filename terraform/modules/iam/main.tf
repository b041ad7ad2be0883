# One role per fleet, each with only what its node does:
#   query     reads and writes tables (inserts commit from the query node), sends events, reads the API key,
#             the internal token and the release, lists the executor group's instances (to route to them),
#             leaves its target group and completes its group's termination hook (to drain first)
#   executor  reads tables and index objects, reads the internal token and the release, completes its hook
#   indexer   reads and writes tables and index objects, receives and deletes events, reads the internal
#             token and the release, completes its hook

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  fleets = toset(["query", "executor", "indexer"])
  arn    = "arn:${data.aws_partition.current.partition}:%s:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:%s"

  # A node's lifecycle agent completes its own group's termination hook (groups are named <name>-<fleet> by
  # modules/node_group); a query node first leaves its own target group (<name>-query, cut at 32 characters).
  complete_termination = { for f in local.fleets : f => {
    sid       = "CompleteTermination"
    actions   = ["autoscaling:CompleteLifecycleAction"]
    resources = [format(local.arn, "autoscaling", "autoScalingGroup:*:autoScalingGroupName/${var.name}-${f}")]
  } }

  s3_read = {
    sid       = "ReadData"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${var.bucket_arn}/*"]
  }
  s3_list = {
    sid       = "ListData"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [var.bucket_arn]
  }
  s3_write = {
    sid       = "WriteData"
    actions   = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${var.bucket_arn}/*"]
  }
  kms_read = {
    sid       = "DecryptData"
    actions   = ["kms:Decrypt", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
  }
  kms_write = {
    sid       = "EncryptData"
    actions   = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }

  # The appliance opens its queues idempotently (CreateQueue returns the existing queue, then it sets the
  # visibility timeout and redrive policy it was configured with): it needs these on the two queues only.
  read_parameters = {
    sid       = "ReadParameters"
    actions   = ["ssm:GetParameter"]
    resources = [var.parameter_arns.internal_token, var.parameter_arns.release]
  }
  sqs_open = ["sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes"]

  statements = {
    query = [
      local.s3_read, local.s3_list, local.s3_write, local.kms_write,
      { sid = "SendEvents", actions = concat(local.sqs_open, ["sqs:SendMessage"]), resources = var.queue_arns },
      { sid = "ReadParameters", actions = ["ssm:GetParameter"], resources = values(var.parameter_arns) },
      # Describe calls cannot be limited to resources: AWS evaluates them against "*" only.
      { sid = "DiscoverExecutors", actions = ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"], resources = ["*"] },
      local.complete_termination.query,
      {
        sid       = "LeaveLoadBalancer"
        actions   = ["elasticloadbalancing:DeregisterTargets"]
        resources = [format(local.arn, "elasticloadbalancing", "targetgroup/${substr("${var.name}-query", 0, 32)}/*")]
      },
      { sid = "FindTargetGroup", actions = ["elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetHealth"], resources = ["*"] },
    ]
    executor = [
      local.s3_read, local.s3_list, local.kms_read,
      local.read_parameters,
      local.complete_termination.executor,
    ]
    indexer = [
      local.s3_read, local.s3_list, local.s3_write, local.kms_write,
      {
        sid       = "ConsumeEvents"
        actions   = concat(local.sqs_open, ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"])
        resources = var.queue_arns
      },
      local.read_parameters,
      local.complete_termination.indexer,
    ]
  }
}

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "fleet" {
  for_each             = local.fleets
  name                 = "${var.name}-${each.key}"
  description          = "appliance ${each.key} nodes"
  assume_role_policy   = data.aws_iam_policy_document.assume_ec2.json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags
}

data "aws_iam_policy_document" "fleet" {
  for_each = local.fleets

  dynamic "statement" {
    for_each = local.statements[each.key]
    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = statement.value.resources
    }
  }
}

resource "aws_iam_policy" "fleet" {
  for_each    = local.fleets
  name        = "${var.name}-${each.key}"
  description = "What appliance ${each.key} nodes may do"
  policy      = data.aws_iam_policy_document.fleet[each.key].json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "fleet" {
  for_each   = local.fleets
  role       = aws_iam_role.fleet[each.key].name
  policy_arn = aws_iam_policy.fleet[each.key].arn
}

resource "aws_iam_role_policy_attachment" "session_manager" {
  for_each   = var.session_manager ? local.fleets : toset([])
  role       = aws_iam_role.fleet[each.key].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "fleet" {
  for_each = local.fleets
  name     = "${var.name}-${each.key}"
  role     = aws_iam_role.fleet[each.key].name
  tags     = var.tags
}
