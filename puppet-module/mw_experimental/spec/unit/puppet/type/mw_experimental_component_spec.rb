# frozen_string_literal: true

require_relative '../../../spec_helper'

describe Puppet::Type.type(:mw_experimental_component) do
  let(:type) { described_class }

  it 'takes the four components as its name, and nothing else' do
    %w[group permissions node code].each do |c|
      expect(type.new(name: c, ensure: 'converged')[:name]).to eq(c)
    end
    expect do
      type.new(name: 'kernel', ensure: 'converged')
    end.to raise_error(Puppet::ResourceError, /Invalid value "kernel"/)
  end

  it 'defaults to the packaged binary and configuration, bounded to 1800 s' do
    r = type.new(name: 'group', ensure: 'converged')
    expect(r[:binary]).to eq('/usr/bin/mw-experimental')
    expect(r[:config]).to eq('/etc/mw-experimental/config.yaml')
    expect(r[:timeout]).to eq(1800)
  end

  it 'refuses relative paths and a timeout that is not a positive integer' do
    expect do
      type.new(name: 'group',
               binary: 'mw-experimental')
    end.to raise_error(Puppet::ResourceError, /binary must be an absolute path/)
    expect do
      type.new(name: 'group',
               config: 'config.yaml')
    end.to raise_error(Puppet::ResourceError, /config must be an absolute path/)
    expect do
      type.new(name: 'group', timeout: 0)
    end.to raise_error(Puppet::ResourceError, /timeout must be a positive integer/)
  end

  it 'can only be asked to be converged' do
    expect do
      type.new(name: 'node', ensure: 'drifted')
    end.to raise_error(Puppet::ResourceError, /ensure can only be 'converged'/)
  end

  it 'is in sync only when converged' do
    prop = type.new(name: 'node', ensure: 'converged').property(:ensure)
    expect(prop.insync?(:converged)).to be(true)
    expect(prop.insync?(:drifted)).to be(false)
    expect(prop.insync?(:failed)).to be(false)
  end

  it 'names the drift in the change message and in what --noop reports' do
    r = type.new(name: 'permissions', ensure: 'converged')
    allow(r.provider).to receive(:drift_summary).and_return('acl 12, default_acl 3')
    prop = r.property(:ensure)
    expect(prop.change_to_s(:drifted, :converged)).to eq('converged acl 12, default_acl 3')
    expect(prop.is_to_s(:drifted)).to eq('drifted (acl 12, default_acl 3)')
  end

  it 'makes permissions require group, so the gid exists before the tree is granted to it' do
    catalog = Puppet::Resource::Catalog.new
    group = type.new(name: 'group', ensure: 'converged')
    perms = type.new(name: 'permissions', ensure: 'converged')
    catalog.add_resource(group)
    catalog.add_resource(perms)
    reqs = perms.autorequire
    expect(reqs.map do |e|
             [e.source.ref, e.target.ref]
           end).to eq([['Mw_experimental_component[group]', 'Mw_experimental_component[permissions]']])
  end
end
