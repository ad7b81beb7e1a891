# frozen_string_literal: true

# @summary One component of an mw-experimental node, converged by the `mw-experimental` binary.
#
# Each resource is one of the binary's components (`group`, `permissions`, `node`, `code`). Its
# state is read with `mw-experimental plan --json` and converged with
# `mw-experimental apply COMPONENT --json`, so a Puppet report shows which component drifted and
# how (the change message names the drift by kind and count, e.g. `acl 12, default_acl 3`),
# `--noop` runs only `plan` and reports what would change, and a component that fails fails
# alone, with the tool's message, while the others still converge. The binary is the only place
# that knows the policy: this type holds none.
#
# `puppet resource mw_experimental_component` lists the state of every component, read with the
# default `binary` and `config`.
#
# @example The component class declares the three that Puppet converges
#   mw_experimental_component { ['group', 'permissions', 'node']:
#     ensure => converged,
#     binary => '/usr/bin/mw-experimental',
#     config => '/etc/mw-experimental/config.yaml',
#   }
Puppet::Type.newtype(:mw_experimental_component) do
  @doc = <<~DOC
    One component of an mw-experimental node (`group`, `permissions`, `node` or `code`), checked
    with `mw-experimental plan --json` and converged with `mw-experimental apply COMPONENT --json`.
    The change message names the drift by kind and count; `--noop` only runs `plan`.
  DOC

  newparam(:name, namevar: true) do
    desc 'The component: `group`, `permissions`, `node` or `code`.'
    newvalues(:group, :permissions, :node, :code)
    munge(&:to_s)
  end

  newproperty(:ensure) do
    desc <<~DOC
      `converged`: what `mw-experimental plan COMPONENT` reports as converged. The state read is
      `converged`, `drifted` (changes pending) or `failed` (the check failed: the apply then runs
      and fails with the tool's message).
    DOC
    newvalue(:converged) do
      provider.converge
    end
    # Only read, never asked for: what `plan` found.
    newvalue(:drifted)
    newvalue(:failed)

    validate do |value|
      unless value.to_s == 'converged'
        raise ArgumentError,
              "ensure can only be 'converged' (drifted and failed are what plan reports), not #{value.inspect}"
      end
    end

    def insync?(is)
      is.to_s == 'converged'
    end

    # The state as `plan` saw it, with the drift by kind and count: what `--noop` reports.
    def is_to_s(value) # rubocop:disable Naming/PredicateName
      summary = provider.drift_summary
      summary.empty? ? value.to_s : "#{value} (#{summary})"
    end

    def should_to_s(value)
      value.to_s
    end

    # The event's message after a change: what drifted, by kind and count.
    def change_to_s(_current, _should)
      summary = provider.drift_summary
      summary.empty? ? 'converged' : "converged #{summary}"
    end
  end

  newparam(:binary) do
    desc 'The `mw-experimental` executable (an absolute path).'
    defaultto '/usr/bin/mw-experimental'
    validate do |value|
      unless value.is_a?(String) && value.start_with?('/')
        raise ArgumentError,
              "binary must be an absolute path, not #{value.inspect}"
      end
    end
  end

  newparam(:config) do
    desc 'The configuration file the binary reads (an absolute path).'
    defaultto '/etc/mw-experimental/config.yaml'
    validate do |value|
      unless value.is_a?(String) && value.start_with?('/')
        raise ArgumentError,
              "config must be an absolute path, not #{value.inspect}"
      end
    end
  end

  newparam(:timeout) do
    desc 'The bound on one run of the binary, in seconds (a first apply walks the whole tree).'
    defaultto 1800
    munge { |value| Integer(value) }
    validate do |value|
      positive = Integer(value, exception: false)&.positive?
      raise ArgumentError, "timeout must be a positive integer, not #{value.inspect}" unless positive
    end
  end

  # The group must exist (with its gid) before the tree is granted to it.
  autorequire(:mw_experimental_component) do
    (self[:name] == 'permissions') ? ['group'] : []
  end
end
