terraform {
  # A pure module: it renders cloud-init user data and creates nothing, so it needs no provider.
  required_version = ">= 1.5.0"
}
