# frozen_string_literal: true

require 'json'
require 'open3'

# A thin adapter over the `mw-experimental` binary: `plan --json` to read, `apply COMPONENT
# --json` to converge, and its JSON mapped to Puppet's states and messages. It holds no policy
# and never decides what is drift: the binary does. It runs the binary as an argument vector (no
# shell), with a fixed PATH (the binary runs groupadd, gpasswd and kubectl by name), and kills it
# (its whole process group) at the resource's timeout.
Puppet::Type.type(:mw_experimental_component).provide(:binary) do
  desc 'Runs the mw-experimental binary: `plan --json` to check, `apply COMPONENT --json` to converge.'

  confine feature: :posix

  # The PATH the binary runs with (it runs groupadd, gpasswd, setfacl and kubectl by name).
  def self.search_path
    '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  end

  # Every component, for `puppet resource`.
  def self.components
    %w[group permissions node code]
  end

  # One run of the binary: [exit status, stdout, stderr]. The single place that executes it, so
  # unit tests replace this alone.
  def self.run(binary, config, args, timeout)
    argv = [binary, '--config', config, '--json', *args]
    Open3.popen3({ 'PATH' => search_path }, *argv, pgroup: true) do |stdin, stdout, stderr, wait|
      stdin.close
      out = Thread.new { stdout.read }
      err = Thread.new { stderr.read }
      unless wait.join(timeout)
        Process.kill('KILL', -wait.pid)
        wait.join
        [out, err].each { |t| t.join(5) }
        raise Puppet::Error, "#{argv.join(' ')} did not finish within #{timeout} s and was killed"
      end
      [wait.value.exitstatus, out.value, err.value]
    end
  rescue SystemCallError => e
    raise Puppet::Error, "cannot run #{binary}: #{e.message}"
  end

  # `plan --json COMPONENT...`: { component => its report }. A component whose check failed has
  # `error`; a run that produced no JSON at all (bad configuration, missing binary) gives every
  # component that error, with the tool's own message.
  def self.plan(binary, config, components, timeout)
    code, out, err = run(binary, config, ['plan', *components], timeout)
    reports = parse(out)
    return reports['components'] if reports.is_a?(Hash) && reports['components'].is_a?(Hash)

    message = tool_message(err, "plan exited #{code} without a report")
    components.to_h { |c| [c, { 'converged' => false, 'error' => message }] }
  end

  def self.parse(text)
    JSON.parse(text)
  rescue JSON::ParserError
    nil
  end

  # The tool's error lines (`mw-experimental: error: ...`), or all it said, or the fallback.
  def self.tool_message(stderr, fallback)
    lines = stderr.to_s.lines.map(&:strip).reject(&:empty?)
    errors = lines.select { |l| l.include?('error') }
    text = (errors.empty? ? lines : errors).join('; ')
    text.empty? ? fallback : text
  end

  def self.state_of(report)
    return :failed if report.nil? || report['error']

    report['converged'] ? :converged : :drifted
  end

  # `puppet resource mw_experimental_component`: every component, read with the defaults.
  def self.instances
    reports = plan('/usr/bin/mw-experimental', '/etc/mw-experimental/config.yaml', components, 1800)
    components.map do |c|
      new(name: c, ensure: state_of(reports[c]), report: reports[c])
    end
  end

  # One `plan` for all the resources that share a binary and a configuration, instead of one
  # process each.
  def self.prefetch(resources)
    resources.values.group_by { |r| [r[:binary], r[:config], r[:timeout]] }.each do |(binary, config, timeout), group|
      reports = plan(binary, config, group.map { |r| r[:name] }, timeout)
      group.each do |r|
        report = reports[r[:name]]
        r.provider = new(name: r[:name], ensure: state_of(report), report: report)
      end
    end
  end

  # This component's report from `plan`: prefetched, or read now (one `plan` run).
  def report
    return @property_hash[:report] if @property_hash.key?(:report)

    reports = self.class.plan(resource[:binary], resource[:config], [resource[:name]], resource[:timeout])
    @property_hash[:report] = reports[resource[:name]]
  end

  def ensure
    @property_hash[:ensure] ||= self.class.state_of(report)
  end

  # The drift by kind and count, non-zero kinds only: "acl 12, default_acl 3". Without counts,
  # the listed changes by action; after a failed check, the tool's error.
  def drift_summary
    r = report || {}
    return r['error'].to_s if r['error']

    counts = (r['counts'] || {}).select { |_, n| n.to_i.positive? }
    counts = (r['changes'] || []).group_by { |c| c['action'] }.transform_values(&:size) if counts.empty?
    counts.sort.map { |kind, n| "#{kind} #{n}" }.join(', ')
  end

  # `apply COMPONENT --json`. The report of the plan stays the message (what drifted); the tool's
  # own error fails this resource alone.
  def converge
    name = resource[:name]
    code, out, err = self.class.run(resource[:binary], resource[:config], ['apply', name], resource[:timeout])
    result = self.class.parse(out)
    applied = result.is_a?(Hash) ? (result['components'] || {})[name] : nil
    if code != 0 || applied.nil? || applied['error']
      message = if applied && applied['error']
                  "#{name}: #{applied['error']}"
                else
                  self.class.tool_message(err,
                                          "apply #{name} exited #{code}")
                end
      raise Puppet::Error, "mw-experimental apply #{name} failed: #{message}"
    end
    (applied['notes'] || []).each { |note| info("note: #{note}") }
    ((report && report['changes']) || []).each { |c| debug("#{c['action']} #{c['target']}: #{c['detail']}") }
    @property_hash[:ensure] = :converged
  end
end
