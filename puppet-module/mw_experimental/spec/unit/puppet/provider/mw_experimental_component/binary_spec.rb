# frozen_string_literal: true

require_relative '../../../../spec_helper'
require 'json'
require 'tmpdir'
require 'fileutils'

describe Puppet::Type.type(:mw_experimental_component).provider(:binary) do
  let(:type) { Puppet::Type.type(:mw_experimental_component) }
  let(:provider_class) { described_class }
  let(:binary) { '/usr/bin/mw-experimental' }
  let(:config) { '/etc/mw-experimental/config.yaml' }
  # What `plan --json` prints (the binary's own shape): one converged component, one drifted,
  # one whose check failed.
  let(:plan_json) do
    {
      'command' => 'plan', 'converged' => false,
      'components' => {
        'group' => { 'converged' => true, 'changes' => [] },
        'permissions' => {
          'converged' => false,
          'counts' => { 'acl' => 12, 'default_acl' => 3, 'owner' => 0, 'mode' => 0 },
          'changes' => [{ 'action' => 'set-acl', 'target' => 'a/f', 'detail' => 'u::rw- -> ...' }],
        },
        'node' => { 'converged' => false, 'error' => 'reading Node n1: the API server answered 500' },
      },
    }.to_json
  end

  def resources(*names, **params)
    names.to_h { |n| [n, type.new(name: n, ensure: 'converged', **params)] }
  end

  describe 'prefetch' do
    it 'runs one plan for every resource sharing binary and config, and maps each report' do
      res = resources('group', 'permissions', 'node')
      allow(provider_class).to receive(:run).and_return([2, plan_json, ''])
      provider_class.prefetch(res)
      expect(provider_class).to have_received(:run).once.with(binary, config, %w[plan group permissions node], 1800)
      expect(res.transform_values { |r| r.provider.ensure }).to eq(
        'group' => :converged, 'permissions' => :drifted, 'node' => :failed,
      )
      expect(res['permissions'].provider.drift_summary).to eq('acl 12, default_acl 3')
      expect(res['node'].provider.drift_summary).to eq('reading Node n1: the API server answered 500')
      expect(res['group'].provider.drift_summary).to eq('')
    end

    it 'gives every component the tool’s message when plan printed no report (a bad configuration)' do
      res = resources('group', 'node')
      err = "mw-experimental: error: /etc/mw-experimental/config.yaml: unknown key `enabeld`\n"
      allow(provider_class).to receive(:run).and_return([2, '', err])
      provider_class.prefetch(res)
      expect(res['group'].provider.ensure).to eq(:failed)
      expect(res['node'].provider.drift_summary).to eq(err.strip)
    end
  end

  describe 'drift_summary' do
    it 'counts listed changes by action when the component gives no counts' do
      report = { 'converged' => false, 'changes' => [
        { 'action' => 'set-label' }, { 'action' => 'set-taint' }, { 'action' => 'set-taint' },
      ], }
      p = provider_class.new(name: 'node', ensure: :drifted, report: report)
      expect(p.drift_summary).to eq('set-label 1, set-taint 2')
    end
  end

  describe 'converge' do
    let(:resource) { type.new(name: 'permissions', ensure: 'converged', timeout: 60) }
    let(:provider) { resource.provider }

    it 'runs apply for this component alone' do
      out = { 'components' => { 'permissions' => { 'converged' => true, 'notes' => ['1 hard link skipped'] } } }.to_json
      allow(provider_class).to receive(:run).and_return([0, out, ''])
      allow(provider).to receive(:report).and_return(nil)
      provider.converge
      expect(provider_class).to have_received(:run).with(binary, config, %w[apply permissions], 60)
      expect(provider.ensure).to eq(:converged)
    end

    it 'fails with the tool’s message for this component' do
      out = { 'components' => { 'permissions' => { 'converged' => false,
                                                   'error' => 'group gid 705 is held by "staff"', } } }.to_json
      allow(provider_class).to receive(:run).and_return([2, out, "mw-experimental: error: applying permissions: ...\n"])
      expect do
        provider.converge
      end.to raise_error(Puppet::Error,
                         'mw-experimental apply permissions failed: permissions: group gid 705 is held by "staff"')
    end

    it 'fails with what the tool said on stderr when it printed no report' do
      err = "mw-experimental: error: another run (pid 7) holds the lock\n"
      allow(provider_class).to receive(:run).and_return([2, '', err])
      expect do
        provider.converge
      end.to raise_error(Puppet::Error,
                         /apply permissions failed: mw-experimental: error: another run \(pid 7\) holds the lock/)
    end
  end

  describe 'instances (puppet resource)' do
    it 'lists every component with its state from one plan' do
      allow(provider_class).to receive(:run)
        .with(binary, config, %w[plan group permissions node code], 1800).and_return([2, plan_json, ''])
      list = provider_class.instances
      expect(list.map(&:name)).to eq(%w[group permissions node code])
      expect(list.map(&:ensure)).to eq(%i[converged drifted failed failed])
    end
  end

  describe 'run (a real process)' do
    let(:dir) { Dir.mktmpdir('mwx-provider-') }

    after { FileUtils.rm_rf(dir) }

    def script(body)
      path = File.join(dir, 'fake-binary')
      File.write(path, "#!/bin/sh\n#{body}\n")
      File.chmod(0o755, path)
      path
    end

    it 'passes --config, --json and the arguments as a vector, with a fixed PATH, and returns both streams' do
      bin = script('printf "%s|" "$@"; echo "$PATH" >&2; exit 1')
      code, out, err = provider_class.run(bin, '/x y/config.yaml', %w[plan group], 10)
      expect(code).to eq(1)
      expect(out).to eq('--config|/x y/config.yaml|--json|plan|group|')
      expect(err.strip).to eq('/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
    end

    it 'kills the binary at the timeout, with a message saying so' do
      bin = script('sleep 30')
      started = Time.now
      expect do
        provider_class.run(bin, config, %w[apply node], 1)
      end.to raise_error(Puppet::Error, /did not finish within 1 s and was killed/)
      expect(Time.now - started).to be < 10
    end

    it 'says which binary it cannot run' do
      expect { provider_class.run('/nonexistent/mw-experimental', config, ['plan'], 5) }
        .to raise_error(Puppet::Error, %r{cannot run /nonexistent/mw-experimental})
    end
  end
end
