terraform {
  # terraform_data needs 1.4; nothing here needs a provider, so `terraform init` downloads nothing.
  required_version = ">= 1.5.0"
}
