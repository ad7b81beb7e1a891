# @summary An mw-experimental Kubernetes worker: package, configuration, fact, components, triggers.
#
# The package, the configuration, the external fact, one `mw_experimental_component` resource
# per component that Puppet converges (`group`, `permissions`, `node`) and the units that start
# the code refresh (`sync`): the hourly timer (the backstop), the path unit
# (`mw-experimental-sync.path`, which starts the sync when the release file is replaced, through
# a drop-in this class writes, or when the image-event file is touched) and, when no release file
# is set, the watch service that touches that file on containerd's image events.
#
# Everything on the node is done by the `mw-experimental` binary; this class only writes its
# configuration (from these parameters, which mirror the configuration file's keys) and declares
# the components, whose provider reads `mw-experimental plan --json` and runs
# `mw-experimental apply COMPONENT --json` only for a component that drifted. A converged node
# sees no change; a report names each component that changed and its drift by kind and count;
# `--noop` runs only `plan`; a component that fails fails alone, with the tool's message.
#
# The switch is `enabled`. Off: `node` still converges, and removes the managed node labels and
# taints (and only those); the timer, the path unit and the watch service are disabled and
# stopped; the code tree and the deployer group are left exactly as they are.
#
# @example The WMF profile does this, with every value from Hiera
#   class { 'mw_experimental':
#     enabled           => true,
#     deployers_members => ['alice', 'bob'],
#     kubeconfig        => Sensitive($kubeconfig_text),
#   }
#
# @param enabled
#   The switch. On: deployer group, code tree permissions, node labels and taints, the sync's
#   triggers running. Off: labels and taints removed, triggers stopped; the tree and the group stay.
# @param node_name
#   The Kubernetes Node object's name; `undef`: this host's name as the kubelet registers it.
# @param code_path
#   The code tree that engineers edit and the pods mount (`code.path`).
# @param code_owner
#   The owner of the tree's root directory (`code.owner`).
# @param code_mode
#   The tree root's mode, four octal digits as a string (`code.mode`).
# @param deployers_group
#   The group whose members may edit the tree (`deployers.group`).
# @param deployers_gid
#   That group's fixed gid (`deployers.gid`).
# @param deployers_members
#   Users put into that group; users that do not exist are reported, not fatal (`deployers.members`).
# @param kubectl
#   The kubectl command: a name found in PATH or an absolute path (`kubernetes.kubectl`).
# @param kubeconfig
#   The kubeconfig's content, written to `${config_dir}/kubeconfig` (mode 0600, never diffed nor
#   logged); `undef`: no kubeconfig file, kubectl's own default applies.
# @param kubernetes_timeout
#   The bound on each API request, in seconds (`kubernetes.timeout_seconds`).
# @param labels
#   The node labels that are managed: set when on, removed when off (`kubernetes.labels`).
# @param taints
#   The node taints that are managed: set when on, removed when off (`kubernetes.taints`).
# @param image_source
#   Where `sync` takes the tree from (`image.source`).
# @param image_containerd_address
#   containerd's socket, for the containerd source (`image.containerd_address`).
# @param image_namespace
#   containerd's namespace that holds the kubelet's images (`image.namespace`).
# @param image_repository
#   The image repository, without tag, whose newest image is synced (`image.repository`).
# @param image_path
#   The tree's path inside the image (`image.path`).
# @param image_location
#   The OCI layout or directory, for those sources (`image.location`).
# @param image_release_file
#   WMF's release values file that names the image to follow, e.g.
#   `/etc/helmfile-defaults/mediawiki/release/mw-experimental-pinkllama-eqiad.yaml`
#   (`image.release_file`); undef: the newest image. Set, the path unit watches it (a drop-in in
#   `/etc/systemd/system/mw-experimental-sync.path.d/release.conf`) and the watch service is off.
# @param image_pull
#   Whether `sync` pulls the release file's image through containerd when the node lacks it
#   (`image.pull`).
# @param state_dir
#   Where the binary keeps its state, lock and the image digests (`state_dir`).
# @param metrics_file
#   The Prometheus node-exporter textfile it writes (`metrics_file`).
# @param manage_package
#   Whether to install the `mw-experimental` package (false: it is installed some other way).
# @param package_ensure
#   The package's `ensure`: `present`, `latest` or a version.
# @param manage_timer
#   Whether to manage the sync's triggers at all (the timer, the path unit and its release file
#   drop-in, the watch service). False only where the package's systemd units are not installed
#   (a binary put in place by hand, tests against a bare binary): they are then left alone.
# @param start_timer
#   Whether to start or stop those units as well as enable or disable them. Needs systemd as PID 1
#   (Puppet's systemd service provider). False, where systemd does not run (containers, CI): the
#   units are only enabled or disabled, with `systemctl`'s offline mode.
# @param binary
#   The `mw-experimental` executable.
# @param config_dir
#   The directory of `config.yaml` and `kubeconfig`.
# @param facts_dir
#   Facter's external facts directory, where the fact `mw_experimental` is linked to the binary.
# @param exec_timeout
#   The bound on each run of `mw-experimental plan` and `apply` by the component resources, in
#   seconds (a first run walks the whole tree).
class mw_experimental (
  Boolean $enabled = false,
  Optional[Mw_experimental::Node_name] $node_name = undef,
  Mw_experimental::Path $code_path = '/srv/mediawiki',
  Mw_experimental::Account $code_owner = 'mwdeploy',
  Pattern[/\A[0-7]{1,4}\z/] $code_mode = '2775',
  Mw_experimental::Account $deployers_group = 'deployment',
  Integer[1, 65533] $deployers_gid = 705,
  Array[Mw_experimental::Account] $deployers_members = [],
  String[1] $kubectl = 'kubectl',
  Optional[Sensitive[String[1]]] $kubeconfig = undef,
  Integer[1, 300] $kubernetes_timeout = 10,
  Hash[String[1], String] $labels = { 'dedicated' => 'mw-experimental' },
  Array[Mw_experimental::Taint] $taints = [
    { 'key' => 'dedicated', 'value' => 'mw-experimental', 'effect' => 'NoSchedule' },
    { 'key' => 'dedicated', 'value' => 'mw-experimental', 'effect' => 'NoExecute' },
  ],
  Enum['containerd', 'oci-layout', 'directory'] $image_source = 'containerd',
  Mw_experimental::Path $image_containerd_address = '/run/containerd/containerd.sock',
  String[1] $image_namespace = 'k8s.io',
  String[1] $image_repository = 'docker-registry.discovery.wmnet/restricted/mediawiki-multiversion',
  Mw_experimental::Path $image_path = '/srv/mediawiki',
  Optional[Mw_experimental::Path] $image_location = undef,
  Optional[Mw_experimental::Path] $image_release_file = undef,
  Boolean $image_pull = true,
  Mw_experimental::Path $state_dir = '/var/lib/mw-experimental',
  Mw_experimental::Path $metrics_file = '/var/lib/prometheus/node.d/mw_experimental.prom',
  Boolean $manage_package = true,
  Mw_experimental::Package_ensure $package_ensure = 'present',
  Boolean $manage_timer = true,
  Boolean $start_timer = true,
  Mw_experimental::Path $binary = '/usr/bin/mw-experimental',
  Mw_experimental::Path $config_dir = '/etc/mw-experimental',
  Mw_experimental::Path $facts_dir = '/etc/facter/facts.d',
  Integer[1] $exec_timeout = 1800,
) {
  $config_file = "${config_dir}/config.yaml"
  $kubeconfig_file = "${config_dir}/kubeconfig"
  $timer = 'mw-experimental-sync.timer'
  $path_unit = 'mw-experimental-sync.path'
  $watch = 'mw-experimental-watch.service'
  # The components Puppet converges; `code` is the timer's (`sync`), never Puppet's.
  $components = ['group', 'permissions', 'node']

  if $manage_package {
    package { 'mw-experimental':
      ensure => $package_ensure,
      before => [File[$config_file], File["${facts_dir}/mw_experimental"], Mw_experimental_component[$components]],
    }
  }

  # The binary's configuration, key for key (DESIGN.md). It holds no secret: engineers read it
  # when they run `mw-experimental status`, so it is world-readable. Unset optional keys are left
  # out, so the binary's defaults apply.
  $config = {
    'enabled'      => $enabled,
    'node_name'    => $node_name,
    'code'         => {
      'path'  => $code_path,
      'owner' => $code_owner,
      'mode'  => $code_mode,
    },
    'deployers'    => {
      'group'   => $deployers_group,
      'gid'     => $deployers_gid,
      'members' => $deployers_members,
    },
    'kubernetes'   => {
      'kubectl'         => $kubectl,
      'kubeconfig'      => $kubeconfig.then |$_| { $kubeconfig_file },
      'timeout_seconds' => $kubernetes_timeout,
      'labels'          => $labels,
      'taints'          => $taints,
    }.filter |$key, $value| { $value =~ NotUndef },
    'image'        => {
      'source'             => $image_source,
      'containerd_address' => $image_containerd_address,
      'namespace'          => $image_namespace,
      'repository'         => $image_repository,
      'path'               => $image_path,
      'location'           => $image_location,
      'release_file'       => $image_release_file,
      'pull'               => $image_pull,
    }.filter |$key, $value| { $value =~ NotUndef },
    'state_dir'    => $state_dir,
    'metrics_file' => $metrics_file,
  }.filter |$key, $value| { $value =~ NotUndef }

  file { $config_dir:
    ensure => directory,
    owner  => 'root',
    group  => 'root',
    mode   => '0755',
  }

  file { $config_file:
    ensure  => file,
    owner   => 'root',
    group   => 'root',
    mode    => '0644',
    content => "# Managed by Puppet (class mw_experimental); local edits are overwritten.\n${to_yaml($config)}",
  }

  # The credentials to the API server: root only, and never in a diff, a log or a report.
  if $kubeconfig =~ Undef {
    file { $kubeconfig_file:
      ensure => absent,
    }
  } else {
    file { $kubeconfig_file:
      ensure    => file,
      owner     => 'root',
      group     => 'root',
      mode      => '0600',
      content   => $kubeconfig,
      show_diff => false,
      before    => Mw_experimental_component['node'],
    }
  }

  # Invoked as `mw_experimental`, the binary is the external fact (it reads only the state file).
  # Debian's facter package makes neither /etc/facter nor its facts.d: both, on a fresh node.
  ensure_resource('file', [dirname($facts_dir), $facts_dir], { 'ensure' => 'directory' })
  file { "${facts_dir}/mw_experimental":
    ensure => link,
    target => $binary,
  }

  # The components: each checked with `plan --json`, converged with `apply COMPONENT --json`
  # when it drifted. `permissions` autorequires `group` (the tree is granted to its gid).
  mw_experimental_component { $components:
    ensure  => converged,
    binary  => $binary,
    config  => $config_file,
    timeout => $exec_timeout,
    require => File[$config_file],
  }

  # What starts `sync` (the code refresh): the hourly timer, the path unit (a touched image-event
  # file, or the release file replaced), and, when the node follows the newest image (no release
  # file), the watch service that touches the image-event file on containerd's image events. On
  # after the components converged (sync needs the group and the tree), off before `node` removes
  # the labels.
  if $manage_timer {
    $dropin_dir = "/etc/systemd/system/${path_unit}.d"
    $dropin = "${dropin_dir}/release.conf"
    # The release file, watched too: scap and rsync replace it by rename, which the path unit sees.
    if $image_release_file =~ Undef {
      file { $dropin:
        ensure => absent,
      }
    } else {
      file { $dropin_dir:
        ensure => directory,
        owner  => 'root',
        group  => 'root',
        mode   => '0755',
      }
      file { $dropin:
        ensure  => file,
        owner   => 'root',
        group   => 'root',
        mode    => '0644',
        content => "# Managed by Puppet (class mw_experimental): start the sync when the release file changes.
[Path]
PathChanged=${image_release_file}
",
      }
    }
    # The watch service only where there is no release file to follow.
    $units = {
      $timer     => $enabled,
      $path_unit => $enabled,
      $watch     => $enabled and $image_release_file =~ Undef,
    }
    if $start_timer {
      # systemd reads a changed drop-in only after a daemon-reload; the path unit is then
      # restarted (it is subscribed to the drop-in) so it watches the new file.
      exec { 'mw-experimental systemctl daemon-reload':
        command     => ['systemctl', 'daemon-reload'],
        path        => ['/usr/bin', '/bin'],
        refreshonly => true,
        subscribe   => File[$dropin],
        before      => Service[$path_unit],
      }
      $unit_resources = $units.map |$unit, $on| {
        $unit_ensure = $on ? { true => 'running', default => 'stopped' }
        service { $unit:
          ensure   => $unit_ensure,
          enable   => $on,
          provider => 'systemd',
        }
        Service[$unit]
      }
      File[$dropin] ~> Service[$path_unit]
    } else {
      # Without systemd as PID 1 Puppet's systemd provider is not functional (and the service type
      # would fall back to update-rc.d), so only the enablement is managed, with systemctl's offline
      # mode, which edits the [Install] symlinks without a running systemd.
      $systemctl = ['/usr/bin', '/bin']
      $unit_resources = $units.map |$unit, $on| {
        if $on {
          exec { "systemctl enable ${unit}":
            command => ['systemctl', 'enable', $unit],
            unless  => [['systemctl', 'is-enabled', '--quiet', $unit]],
            path    => $systemctl,
          }
          Exec["systemctl enable ${unit}"]
        } else {
          exec { "systemctl disable ${unit}":
            command => ['systemctl', 'disable', $unit],
            onlyif  => [['systemctl', 'is-enabled', '--quiet', $unit]],
            path    => $systemctl,
          }
          Exec["systemctl disable ${unit}"]
        }
      }
    }
    if $manage_package {
      Package['mw-experimental'] -> File[$dropin] -> $unit_resources
    }
    if $enabled {
      Mw_experimental_component[$components] -> $unit_resources
    } else {
      $unit_resources -> Mw_experimental_component[$components]
    }
  }
}
