# @summary A Kubernetes Node object's name: a lower-case DNS subdomain (RFC 1123).
type Mw_experimental::Node_name = Pattern[/\A[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\z/]
