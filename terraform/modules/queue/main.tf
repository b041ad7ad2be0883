# The event queue: query nodes publish "table appended" events after each commit; indexers consume them.
# It is an SQS FIFO queue because its message groups (one per table) give a per-table lease for free: two
# indexers never work on one table at once. Events that keep failing move to the dead-letter queue.
#
# The names and attributes are those the appliance expects for APPLIANCE_EVENTS=sqs://<name>-events
# (appliance/events/sqs.py): <base>.fifo with <base>-dead.fifo beside it, no content-based
# deduplication, and the visibility timeout and receive count of APPLIANCE_EVENT_VISIBILITY_TIMEOUT and
# APPLIANCE_EVENT_MAX_RECEIVES (pass this module's outputs to those settings so the two agree).

locals {
  base = "${var.name}-events"
}

resource "aws_sqs_queue" "dead_letter" {
  name                        = "${local.base}-dead.fifo"
  fifo_queue                  = true
  content_based_deduplication = false
  message_retention_seconds   = var.dead_letter_retention_seconds
  sqs_managed_sse_enabled     = true
  tags                        = var.tags
}

resource "aws_sqs_queue" "events" {
  name                        = "${local.base}.fifo"
  fifo_queue                  = true
  content_based_deduplication = false
  visibility_timeout_seconds  = var.visibility_timeout_seconds
  message_retention_seconds   = var.message_retention_seconds
  sqs_managed_sse_enabled     = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

resource "aws_sqs_queue_redrive_allow_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.events.arn]
  })
}

data "aws_iam_policy_document" "tls_only" {
  for_each = { events = aws_sqs_queue.events.arn, dead_letter = aws_sqs_queue.dead_letter.arn }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [each.value]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "events" {
  queue_url = aws_sqs_queue.events.id
  policy    = data.aws_iam_policy_document.tls_only["events"].json
}

resource "aws_sqs_queue_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id
  policy    = data.aws_iam_policy_document.tls_only["dead_letter"].json
}
