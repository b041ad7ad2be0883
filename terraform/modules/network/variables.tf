variable "name" {
  description = "Prefix of the VPC, subnets, gateways and security groups' Name tags (the environment validates it)."
  type        = string
}

variable "vpc_id" {
  description = "An existing VPC to deploy into. Null: a new VPC is created (public subnets for the load balancer, private subnets with a NAT gateway for the fleets)."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null || can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be null or a VPC id (vpc-...)."
  }
}

variable "public_subnet_ids" {
  description = "With vpc_id: subnets of the load balancer (at least two zones when it is internet-facing). Ignored when a VPC is created."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.public_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "public_subnet_ids must be subnet ids (subnet-...)."
  }
}

variable "private_subnet_ids" {
  description = "With vpc_id: subnets of the fleets' instances (they need outbound HTTPS, through NAT or endpoints). Ignored when a VPC is created."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "private_subnet_ids must be subnet ids (subnet-...)."
  }
}

variable "cidr_block" {
  description = "Address range of a created VPC; each zone gets a /20-sized (for a /16) public and private subnet."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && tonumber(split("/", var.cidr_block)[1]) <= 20
    error_message = "cidr_block must be an IPv4 CIDR of /20 or larger."
  }
}

variable "availability_zone_count" {
  description = "Zones a created VPC spans."
  type        = number
  default     = 2

  validation {
    condition     = var.availability_zone_count >= 2 && var.availability_zone_count <= 6
    error_message = "availability_zone_count must be between 2 and 6 (an application load balancer needs two)."
  }
}

variable "availability_zones" {
  description = "Zones of a created VPC, by name (such as [\"eu-west-1a\", \"eu-west-1b\"]). Empty: the first availability_zone_count zones of the region."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || length(var.availability_zones) >= 2
    error_message = "availability_zones must be empty or name at least two zones."
  }
}

variable "nat_gateway" {
  description = "Give the private subnets of a created VPC a NAT gateway (one, in the first zone) for outbound HTTPS (package installs)."
  type        = bool
  default     = true
}

variable "flow_logs" {
  description = "Send the created VPC's flow logs to flow_log_bucket_arn."
  type        = bool
  default     = true
}

variable "flow_log_bucket_arn" {
  description = "Bucket that receives the created VPC's flow logs (under AWSLogs/); required when flow_logs is true and a VPC is created."
  type        = string
  default     = null

  validation {
    condition     = var.flow_log_bucket_arn == null || can(regex("^arn:aws[a-z-]*:s3:::", var.flow_log_bucket_arn))
    error_message = "flow_log_bucket_arn must be null or an S3 bucket ARN."
  }
}

variable "load_balancer_ingress_cidrs" {
  description = "Address ranges allowed to reach the load balancer's listeners."
  type        = list(string)

  validation {
    condition     = length(var.load_balancer_ingress_cidrs) > 0 && alltrue([for c in var.load_balancer_ingress_cidrs : can(cidrhost(c, 0))])
    error_message = "load_balancer_ingress_cidrs must be a non-empty list of IPv4 CIDRs."
  }
}

variable "load_balancer_ports" {
  description = "Listener ports of the load balancer (443 for HTTPS, 80 for HTTP or the redirect to HTTPS)."
  type        = list(number)
  default     = [80, 443]

  validation {
    condition     = length(var.load_balancer_ports) > 0 && alltrue([for p in var.load_balancer_ports : p >= 1 && p <= 65535])
    error_message = "load_balancer_ports must be a non-empty list of ports."
  }
}

variable "query_port" {
  description = "Port the query nodes listen on."
  type        = number
  default     = 8080

  validation {
    condition     = var.query_port >= 1024 && var.query_port <= 65535
    error_message = "query_port must be between 1024 and 65535."
  }
}

variable "executor_port" {
  description = "Port the executors listen on (reachable from query nodes only)."
  type        = number
  default     = 8181

  validation {
    condition     = var.executor_port >= 1024 && var.executor_port <= 65535
    error_message = "executor_port must be between 1024 and 65535."
  }
}

variable "executor_flight_port" {
  description = "Port of the executors' Arrow Flight servers (executor_port + the executors' flight_port_offset), reachable from query nodes only."
  type        = number
  default     = 9181

  validation {
    condition     = var.executor_flight_port >= 1024 && var.executor_flight_port <= 65535
    error_message = "executor_flight_port must be between 1024 and 65535."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
