# @summary The mw-experimental node side, WMF style: class mw_experimental with Hiera's values.
#
# Every parameter comes from Hiera (`profile::mw_experimental::<name>`; the defaults, with the
# switch `enabled` off, are in common.yaml) and goes unchanged to the component module, which
# does the work.
#
# The kubeconfig is a secret: Hiera's `lookup_options` in common.yaml make it Sensitive. It is the
# one key without a default in common.yaml (a null would become Sensitive[Undef]): unset, no
# kubeconfig file is written and kubectl uses its own default.
#
# @example A role
#   class role::mw_experimental {
#     include profile::mw_experimental
#   }
#
# @param enabled
#   See mw_experimental::enabled.
# @param node_name
#   See mw_experimental::node_name.
# @param code_path
#   See mw_experimental::code_path.
# @param code_owner
#   See mw_experimental::code_owner.
# @param code_mode
#   See mw_experimental::code_mode.
# @param deployers_group
#   See mw_experimental::deployers_group.
# @param deployers_gid
#   See mw_experimental::deployers_gid.
# @param deployers_members
#   See mw_experimental::deployers_members.
# @param kubectl
#   See mw_experimental::kubectl.
# @param kubeconfig
#   See mw_experimental::kubeconfig.
# @param kubernetes_timeout
#   See mw_experimental::kubernetes_timeout.
# @param labels
#   See mw_experimental::labels.
# @param taints
#   See mw_experimental::taints.
# @param image_source
#   See mw_experimental::image_source.
# @param image_containerd_address
#   See mw_experimental::image_containerd_address.
# @param image_namespace
#   See mw_experimental::image_namespace.
# @param image_repository
#   See mw_experimental::image_repository.
# @param image_path
#   See mw_experimental::image_path.
# @param image_location
#   See mw_experimental::image_location.
# @param image_release_file
#   See mw_experimental::image_release_file.
# @param image_pull
#   See mw_experimental::image_pull.
# @param state_dir
#   See mw_experimental::state_dir.
# @param metrics_file
#   See mw_experimental::metrics_file.
# @param manage_package
#   See mw_experimental::manage_package.
# @param package_ensure
#   See mw_experimental::package_ensure.
# @param manage_timer
#   See mw_experimental::manage_timer.
# @param start_timer
#   See mw_experimental::start_timer.
# @param binary
#   See mw_experimental::binary.
# @param config_dir
#   See mw_experimental::config_dir.
# @param facts_dir
#   See mw_experimental::facts_dir.
# @param exec_timeout
#   See mw_experimental::exec_timeout.
class profile::mw_experimental (
  Boolean $enabled = lookup('profile::mw_experimental::enabled'),
  Optional[Mw_experimental::Node_name] $node_name = lookup('profile::mw_experimental::node_name'),
  Mw_experimental::Path $code_path = lookup('profile::mw_experimental::code_path'),
  Mw_experimental::Account $code_owner = lookup('profile::mw_experimental::code_owner'),
  Pattern[/\A[0-7]{1,4}\z/] $code_mode = lookup('profile::mw_experimental::code_mode'),
  Mw_experimental::Account $deployers_group = lookup('profile::mw_experimental::deployers_group'),
  Integer[1, 65533] $deployers_gid = lookup('profile::mw_experimental::deployers_gid'),
  Array[Mw_experimental::Account] $deployers_members = lookup('profile::mw_experimental::deployers_members'),
  String[1] $kubectl = lookup('profile::mw_experimental::kubectl'),
  Optional[Sensitive[String[1]]] $kubeconfig = lookup('profile::mw_experimental::kubeconfig', { 'default_value' => undef }),
  Integer[1, 300] $kubernetes_timeout = lookup('profile::mw_experimental::kubernetes_timeout'),
  Hash[String[1], String] $labels = lookup('profile::mw_experimental::labels'),
  Array[Mw_experimental::Taint] $taints = lookup('profile::mw_experimental::taints'),
  Enum['containerd', 'oci-layout', 'directory'] $image_source = lookup('profile::mw_experimental::image_source'),
  Mw_experimental::Path $image_containerd_address = lookup('profile::mw_experimental::image_containerd_address'),
  String[1] $image_namespace = lookup('profile::mw_experimental::image_namespace'),
  String[1] $image_repository = lookup('profile::mw_experimental::image_repository'),
  Mw_experimental::Path $image_path = lookup('profile::mw_experimental::image_path'),
  Optional[Mw_experimental::Path] $image_location = lookup('profile::mw_experimental::image_location'),
  Optional[Mw_experimental::Path] $image_release_file = lookup('profile::mw_experimental::image_release_file'),
  Boolean $image_pull = lookup('profile::mw_experimental::image_pull'),
  Mw_experimental::Path $state_dir = lookup('profile::mw_experimental::state_dir'),
  Mw_experimental::Path $metrics_file = lookup('profile::mw_experimental::metrics_file'),
  Boolean $manage_package = lookup('profile::mw_experimental::manage_package'),
  Mw_experimental::Package_ensure $package_ensure = lookup('profile::mw_experimental::package_ensure'),
  Boolean $manage_timer = lookup('profile::mw_experimental::manage_timer'),
  Boolean $start_timer = lookup('profile::mw_experimental::start_timer'),
  Mw_experimental::Path $binary = lookup('profile::mw_experimental::binary'),
  Mw_experimental::Path $config_dir = lookup('profile::mw_experimental::config_dir'),
  Mw_experimental::Path $facts_dir = lookup('profile::mw_experimental::facts_dir'),
  Integer[1] $exec_timeout = lookup('profile::mw_experimental::exec_timeout'),
) {
  class { 'mw_experimental':
    enabled                  => $enabled,
    node_name                => $node_name,
    code_path                => $code_path,
    code_owner               => $code_owner,
    code_mode                => $code_mode,
    deployers_group          => $deployers_group,
    deployers_gid            => $deployers_gid,
    deployers_members        => $deployers_members,
    kubectl                  => $kubectl,
    kubeconfig               => $kubeconfig,
    kubernetes_timeout       => $kubernetes_timeout,
    labels                   => $labels,
    taints                   => $taints,
    image_source             => $image_source,
    image_containerd_address => $image_containerd_address,
    image_namespace          => $image_namespace,
    image_repository         => $image_repository,
    image_path               => $image_path,
    image_location           => $image_location,
    image_release_file       => $image_release_file,
    image_pull               => $image_pull,
    state_dir                => $state_dir,
    metrics_file             => $metrics_file,
    manage_package           => $manage_package,
    package_ensure           => $package_ensure,
    manage_timer             => $manage_timer,
    start_timer              => $start_timer,
    binary                   => $binary,
    config_dir               => $config_dir,
    facts_dir                => $facts_dir,
    exec_timeout             => $exec_timeout,
  }
}
