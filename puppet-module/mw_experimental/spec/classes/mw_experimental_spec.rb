# frozen_string_literal: true

require 'spec_helper'

describe 'mw_experimental' do
  let(:config) { '/etc/mw-experimental/config.yaml' }
  let(:kubeconfig) { '/etc/mw-experimental/kubeconfig' }
  let(:timer) { 'mw-experimental-sync.timer' }
  let(:path_unit) { 'mw-experimental-sync.path' }
  let(:watch) { 'mw-experimental-watch.service' }
  let(:dropin) { '/etc/systemd/system/mw-experimental-sync.path.d/release.conf' }

  context 'with the defaults: the switch off' do
    it { is_expected.to compile.with_all_deps }
    it { is_expected.to contain_package('mw-experimental').with_ensure('present') }

    it 'writes every configuration key, with the switch off and no kubeconfig' do
      file = catalogue.resource('File', config)
      expect(file[:mode]).to eq('0644')
      expect(file[:content]).to start_with('# Managed by Puppet')
      expect(config_yaml(file[:content])).to eq(
        'enabled' => false,
        'code' => { 'path' => '/srv/mediawiki', 'owner' => 'mwdeploy', 'mode' => '2775' },
        'deployers' => { 'group' => 'deployment', 'gid' => 705, 'members' => [] },
        'kubernetes' => {
          'kubectl' => 'kubectl',
          'timeout_seconds' => 10,
          'labels' => { 'dedicated' => 'mw-experimental' },
          'taints' => [
            { 'key' => 'dedicated', 'value' => 'mw-experimental', 'effect' => 'NoSchedule' },
            { 'key' => 'dedicated', 'value' => 'mw-experimental', 'effect' => 'NoExecute' },
          ],
        },
        'image' => {
          'source' => 'containerd',
          'containerd_address' => '/run/containerd/containerd.sock',
          'namespace' => 'k8s.io',
          'repository' => 'docker-registry.discovery.wmnet/restricted/mediawiki-multiversion',
          'path' => '/srv/mediawiki',
          'pull' => true,
        },
        'state_dir' => '/var/lib/mw-experimental',
        'metrics_file' => '/var/lib/prometheus/node.d/mw_experimental.prom',
      )
    end

    it { is_expected.to contain_file(kubeconfig).with_ensure('absent') }

    it 'links the external fact to the binary' do
      expect(catalogue).to contain_file('/etc/facter/facts.d/mw_experimental')
        .with_ensure('link').with_target('/usr/bin/mw-experimental')
      expect(catalogue).to contain_file('/etc/facter/facts.d').with_ensure('directory')
      # A fresh Debian node has no /etc/facter either.
      expect(catalogue).to contain_file('/etc/facter').with_ensure('directory')
    end

    it 'still converges each component (node removes the labels and taints), bounded' do
      %w[group permissions node].each do |c|
        expect(catalogue).to contain_mw_experimental_component(c).with(
          ensure: 'converged', binary: '/usr/bin/mw-experimental', config: config, timeout: 1800,
        ).that_requires("File[#{config}]").that_requires('Package[mw-experimental]')
      end
    end

    it 'leaves code to the timer, and has no exec around the binary (only a daemon-reload on a changed drop-in)' do
      expect(catalogue).not_to contain_mw_experimental_component('code')
      execs = catalogue.resources.select { |r| r.type == 'Exec' }
      expect(execs.map(&:title)).to eq(['mw-experimental systemctl daemon-reload'])
      expect(catalogue).to contain_exec('mw-experimental systemctl daemon-reload')
        .with(command: %w[systemctl daemon-reload], refreshonly: true)
    end

    it 'stops and disables the timer, the path unit and the watch service, before the apply' do
      [timer, path_unit, watch].each do |unit|
        expect(catalogue).to contain_service(unit)
          .with(ensure: 'stopped', enable: false, provider: 'systemd')
          .that_comes_before('Mw_experimental_component[node]')
      end
    end

    it { is_expected.to contain_file(dropin).with_ensure('absent') }

    it 'never manages the code tree: engineers’ work stays' do
      expect(catalogue.resource('File', '/srv/mediawiki')).to be_nil
    end
  end

  context 'with the switch on and a kubeconfig' do
    let(:params) do
      {
        enabled: true,
        node_name: 'wikikube-worker-exp1001.eqiad.wmnet',
        deployers_members: %w[alice bob],
        kubeconfig: sensitive("apiVersion: v1\nusers:\n- user: {token: s3cr3t-token}\n"),
      }
    end

    it { is_expected.to compile.with_all_deps }

    it 'writes the kubeconfig root-only, as a sensitive value, never diffed' do
      expect(catalogue).to contain_file(kubeconfig).with(
        ensure: 'file', owner: 'root', group: 'root', mode: '0600', show_diff: false,
        content: sensitive("apiVersion: v1\nusers:\n- user: {token: s3cr3t-token}\n")
      ).that_comes_before('Mw_experimental_component[node]')
      expect(catalogue.resource('File', kubeconfig).sensitive_parameters).to include(:content)
    end

    it 'points the configuration at the kubeconfig file, without the secret in it' do
      content = catalogue.resource('File', config)[:content]
      expect(content).not_to include('s3cr3t-token')
      cfg = config_yaml(content)
      expect(cfg['enabled']).to be(true)
      expect(cfg['node_name']).to eq('wikikube-worker-exp1001.eqiad.wmnet')
      expect(cfg['deployers']['members']).to eq(%w[alice bob])
      expect(cfg['kubernetes']['kubeconfig']).to eq(kubeconfig)
    end

    it 'carries the secret only in parameters marked sensitive (redacted in reports and logs)' do
      leaks = catalogue.resources.flat_map do |r|
        r.to_hash.select { |_k, v| Array(v).flatten.any? { |x| x.to_s.include?('s3cr3t-token') } }
         .keys.reject { |k| r.sensitive_parameters.include?(k) }.map { |k| "#{r.ref}[#{k}]" }
      end
      expect(leaks).to eq([])
    end

    it 'starts and enables the timer, the path unit and (no release file) the watch service after a converged apply' do
      [timer, path_unit, watch].each do |unit|
        expect(catalogue).to contain_service(unit)
          .with(ensure: 'running', enable: true, provider: 'systemd')
          .that_requires('Mw_experimental_component[group]')
          .that_requires('Mw_experimental_component[permissions]')
          .that_requires('Mw_experimental_component[node]')
          .that_requires('Package[mw-experimental]')
      end
    end

    it { is_expected.to contain_file(dropin).with_ensure('absent') }
  end

  context 'with the switch on and a release file' do
    let(:release) { '/etc/helmfile-defaults/mediawiki/release/mw-experimental-pinkllama-eqiad.yaml' }
    let(:params) { { enabled: true, image_release_file: release } }

    it { is_expected.to compile.with_all_deps }

    it 'has the path unit watch the release file, in a drop-in' do
      expect(catalogue).to contain_file(dropin).with(ensure: 'file', owner: 'root', mode: '0644')
                                               .that_requires('Package[mw-experimental]')
      content = catalogue.resource('File', dropin)[:content]
      expect(content.lines.reject { |l| l.start_with?('#') }.join).to eq("[Path]\nPathChanged=#{release}\n")
    end

    it 'reloads systemd and restarts the path unit when the drop-in changes' do
      expect(catalogue).to contain_exec('mw-experimental systemctl daemon-reload')
        .that_subscribes_to("File[#{dropin}]").that_comes_before("Service[#{path_unit}]")
      expect(catalogue).to contain_service(path_unit).with(ensure: 'running', enable: true)
                                                     .that_subscribes_to("File[#{dropin}]")
    end

    it 'runs the timer, and stops the watch service (the release file names the image)' do
      expect(catalogue).to contain_service(timer).with(ensure: 'running', enable: true)
      expect(catalogue).to contain_service(watch).with(ensure: 'stopped', enable: false)
    end
  end

  context 'without systemd as PID 1 (start_timer false), switch on' do
    let(:params) { { enabled: true, start_timer: false, manage_package: false } }

    it { is_expected.to compile.with_all_deps }
    it { is_expected.not_to contain_service(timer) }
    it { is_expected.not_to contain_service(path_unit) }
    it { is_expected.not_to contain_package('mw-experimental') }

    it 'only enables the timer, the path unit and the watch service offline, checked by exit code' do
      [timer, path_unit, watch].each do |unit|
        expect(catalogue).to contain_exec("systemctl enable #{unit}").with(
          command: ['systemctl', 'enable', unit],
          unless: [['systemctl', 'is-enabled', '--quiet', unit]],
        ).that_requires('Mw_experimental_component[node]')
      end
    end
  end

  context 'without systemd as PID 1 (start_timer false), switch off' do
    let(:params) { { enabled: false, start_timer: false } }

    it 'disables the timer, the path unit and the watch service if they are enabled, before the apply' do
      [timer, path_unit, watch].each do |unit|
        expect(catalogue).to contain_exec("systemctl disable #{unit}").with(
          command: ['systemctl', 'disable', unit],
          onlyif: [['systemctl', 'is-enabled', '--quiet', unit]],
        ).that_comes_before('Mw_experimental_component[node]')
      end
    end
  end

  context 'with manage_timer false (no packaged units), switch on' do
    let(:params) { { enabled: true, manage_timer: false, manage_package: false } }

    it { is_expected.to compile.with_all_deps }

    it 'leaves the timer, the path unit and its drop-in alone, and still converges every component' do
      expect(catalogue).not_to contain_service(timer)
      expect(catalogue).not_to contain_service(path_unit)
      expect(catalogue).not_to contain_file(dropin)
      expect(catalogue.resources.select { |r| r.type == 'Exec' }).to eq([])
      %w[group permissions node].each { |c| expect(catalogue).to contain_mw_experimental_component(c) }
    end
  end

  context 'with paths for a test world' do
    let(:params) do
      {
        binary: '/opt/mwx/bin/mw-experimental', config_dir: '/tmp/mwx/etc', facts_dir: '/tmp/mwx/facts.d',
        image_source: 'oci-layout', image_location: '/tmp/mwx/layout', exec_timeout: 60,
        image_release_file: '/tmp/mwx/release/mw-experimental-pinkllama-eqiad.yaml', image_pull: false,
      }
    end

    it 'runs that binary with that config, and links the fact in that directory' do
      expect(catalogue).to contain_mw_experimental_component('permissions').with(
        binary: '/opt/mwx/bin/mw-experimental', config: '/tmp/mwx/etc/config.yaml', timeout: 60,
      )
      expect(catalogue).to contain_file('/tmp/mwx/facts.d/mw_experimental').with_target('/opt/mwx/bin/mw-experimental')
      image = config_yaml(catalogue.resource('File', '/tmp/mwx/etc/config.yaml')[:content])['image']
      expect(image).to include('source' => 'oci-layout', 'location' => '/tmp/mwx/layout',
                               'release_file' => '/tmp/mwx/release/mw-experimental-pinkllama-eqiad.yaml',
                               'pull' => false)
    end
  end

  context 'with bad values, rejected before anything is applied' do
    {
      code_mode: '2779',
      code_path: '/srv/mediawiki/',
      state_dir: '/var/lib/../tmp',
      node_name: 'Worker_1',
      deployers_gid: 70_000,
      deployers_group: 'Deploy Ment',
      kubernetes_timeout: 0,
      image_source: 'registry',
      taints: [{ 'key' => 'dedicated', 'effect' => 'Sometimes' }],
    }.each do |name, value|
      context "#{name} => #{value.inspect}" do
        let(:params) { { name => value } }

        it { is_expected.to compile.and_raise_error(/parameter '#{name}'/) }
      end
    end

    context 'with a kubeconfig that is not Sensitive' do
      let(:params) { { kubeconfig: 'apiVersion: v1' } }

      let(:message) { /parameter 'kubeconfig' expects a value of type Undef or Sensitive/ }

      it { is_expected.to compile.and_raise_error(message) }
    end
  end
end
