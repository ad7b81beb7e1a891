# frozen_string_literal: true

require 'spec_helper'

describe 'profile::mw_experimental' do
  # Every parameter of the component class, with its default: common.yaml must give each one,
  # and the same value, so the profile adds nothing of its own.
  let(:component_defaults) do
    {
      enabled: false, code_path: '/srv/mediawiki', code_owner: 'mwdeploy', code_mode: '2775',
      deployers_group: 'deployment', deployers_gid: 705, deployers_members: [], kubectl: 'kubectl',
      kubernetes_timeout: 10, labels: { 'dedicated' => 'mw-experimental' },
      taints: [
        { 'key' => 'dedicated', 'value' => 'mw-experimental', 'effect' => 'NoSchedule' },
        { 'key' => 'dedicated', 'value' => 'mw-experimental', 'effect' => 'NoExecute' },
      ],
      image_source: 'containerd', image_containerd_address: '/run/containerd/containerd.sock',
      image_namespace: 'k8s.io', image_repository: 'docker-registry.discovery.wmnet/restricted/mediawiki-multiversion',
      image_path: '/srv/mediawiki', image_pull: true, state_dir: '/var/lib/mw-experimental',
      metrics_file: '/var/lib/prometheus/node.d/mw_experimental.prom', manage_package: true,
      package_ensure: 'present', start_timer: true, binary: '/usr/bin/mw-experimental',
      config_dir: '/etc/mw-experimental', facts_dir: '/etc/facter/facts.d', exec_timeout: 1800,
    }
  end

  context 'on any host: common.yaml, the switch off' do
    it { is_expected.to compile.with_all_deps }

    it 'passes common.yaml’s values, which are the component’s defaults' do
      expect(catalogue).to contain_class('mw_experimental').with(component_defaults)
      expect(catalogue).to contain_class('mw_experimental').without_node_name.without_kubeconfig.without_image_location
                                                           .without_image_release_file
    end

    it { is_expected.to contain_service('mw-experimental-sync.timer').with(ensure: 'stopped', enable: false) }
  end

  context 'on a host of role mw_experimental: the switch on, WMF values' do
    let(:facts) { { 'role' => 'mw_experimental' } }

    it { is_expected.to compile.with_all_deps }

    it do
      expect(catalogue).to contain_class('mw_experimental').with(
        enabled: true, deployers_group: 'deployment', deployers_gid: 705, code_owner: 'mwdeploy',
        code_mode: '2775', labels: { 'dedicated' => 'mw-experimental' },
        taints: [
          { 'key' => 'dedicated', 'value' => 'mw-experimental', 'effect' => 'NoSchedule' },
          { 'key' => 'dedicated', 'value' => 'mw-experimental', 'effect' => 'NoExecute' },
        ]
      )
    end

    it { is_expected.to contain_service('mw-experimental-sync.timer').with(ensure: 'running', enable: true) }
  end

  context 'on wikikube-worker-exp1001.eqiad.wmnet: the host layer names its Node' do
    let(:node) { 'wikikube-worker-exp1001.eqiad.wmnet' }
    let(:facts) { { 'role' => 'mw_experimental' } }

    it {
      expect(catalogue).to contain_class('mw_experimental').with(enabled: true,
                                                                 node_name: 'wikikube-worker-exp1001.eqiad.wmnet')
    }
  end

  context 'with a test layer over hiera/ that gives a kubeconfig' do
    let(:hiera_config) { File.join(__dir__, '..', 'fixtures', 'hiera', 'hiera.yaml') }
    let(:facts) { { 'role' => 'mw_experimental' } }

    it { is_expected.to compile.with_all_deps }

    it 'the test layer wins over the role layer, which wins over common.yaml' do
      expect(catalogue).to contain_class('mw_experimental').with(enabled: true, manage_package: false,
                                                                 start_timer: false)
    end

    it 'the kubeconfig arrives Sensitive (lookup_options), and is written as such' do
      secret = "apiVersion: v1\nusers:\n- user: {token: hiera-s3cr3t}\n"
      expect(catalogue).to contain_class('mw_experimental').with_kubeconfig(sensitive(secret))
      expect(catalogue).to contain_file('/etc/mw-experimental/kubeconfig').with(mode: '0600', show_diff: false,
                                                                                content: sensitive(secret))
      expect(catalogue.resource('Class', 'Mw_experimental').sensitive_parameters).to include(:kubeconfig)
    end
  end
end
