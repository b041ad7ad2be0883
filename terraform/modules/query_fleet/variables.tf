variable "host" {
  description = "Settings every host of the deployment shares, built once by the environment (see modules/node_group, which validates them): name, subnet_ids, security_group_ids, instance_profile_names, ami_ids, root_volume_size_gb, ebs_kms_key_arn, appliance_package, release_parameter, pip_index_url, settings, internal_token_parameter, tags."
  type        = any
}

variable "fleet" {
  description = "Overrides of the query fleet's defaults: instance_type (c7i.xlarge), min_size (2), max_size (6), cpu_target_percent (60), drain_seconds (60: how long a terminating node drains after leaving the load balancer), min_healthy_percentage (100), max_healthy_percentage (150) of the instance refresh."
  type        = any
  default     = {}
}

variable "port" {
  description = "Port the query nodes listen on."
  type        = number
  default     = 8080
}

variable "vpc_id" {
  description = "VPC of the load balancer's target group."
  type        = string
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the load balancer (two zones or more)."
  type        = list(string)

  validation {
    condition     = length(var.load_balancer_subnet_ids) >= 2
    error_message = "An application load balancer needs subnets in at least two zones."
  }
}

variable "load_balancer_security_group_id" {
  description = "Security group of the load balancer (from the network module)."
  type        = string
}

variable "internal" {
  description = "Make the load balancer internal (reachable inside the VPC only) rather than internet-facing."
  type        = bool
  default     = false
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener (443); port 80 then redirects to it. Null: plain HTTP on port 80, for private or test deployments only."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be null or an ACM certificate ARN."
  }
}

variable "access_logs_bucket" {
  description = "Bucket receiving the load balancer's access logs (under alb/)."
  type        = string
}

variable "waf_web_acl_arn" {
  description = "WAFv2 web ACL to associate with the load balancer. Null: none."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion (turn off before `terraform destroy`)."
  type        = bool
  default     = true
}

variable "api_key_parameter" {
  description = "Name of the SSM SecureString parameter with the clients' API key."
  type        = string
}

variable "executor_autoscaling_group_name" {
  description = "Executor fleet the query nodes route to (its InService instances are listed every minute)."
  type        = string
}

variable "executor_port" {
  description = "Port the executors listen on."
  type        = number
  default     = 8181
}
