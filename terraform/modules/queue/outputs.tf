output "events_setting" {
  description = "Value of APPLIANCE_EVENTS for this queue, without region (append ?region=R)."
  value       = "sqs://${local.base}"
}

output "queue_url" {
  description = "URL of the event queue."
  value       = aws_sqs_queue.events.id
}

output "queue_arn" {
  description = "ARN of the event queue."
  value       = aws_sqs_queue.events.arn
}

output "queue_name" {
  description = "Name of the event queue (the CloudWatch QueueName dimension)."
  value       = aws_sqs_queue.events.name
}

output "visibility_timeout_seconds" {
  description = "The queue's visibility timeout, for APPLIANCE_EVENT_VISIBILITY_TIMEOUT."
  value       = aws_sqs_queue.events.visibility_timeout_seconds
}

output "max_receive_count" {
  description = "Deliveries before dead-lettering, for APPLIANCE_EVENT_MAX_RECEIVES."
  value       = var.max_receive_count
}

output "dead_letter_queue_url" {
  description = "URL of the dead-letter queue."
  value       = aws_sqs_queue.dead_letter.id
}

output "dead_letter_queue_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dead_letter.arn
}
