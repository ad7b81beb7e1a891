# frozen_string_literal: true

# rspec-puppet setup shared by the modules' specs, for Debian's packages (ruby-rspec-puppet,
# puppet 7, puppet-module-puppetlabs-stdlib) without bundler or gems from the internet: the
# modules are found in this directory and in Debian's /usr/share/puppet/modules, Hiera data in
# the repository's hiera/.
require 'rspec-puppet'
require 'tmpdir'
require 'yaml'

MODULES = __dir__
REPO = File.expand_path('..', MODULES)

RSpec.configure do |c|
  # Debian's rspec-puppet would otherwise make spec/fixtures (a symlink back to the module, so
  # every spec would run twice): the modules are found where they are.
  c.setup_fixtures = false
  c.module_path = [MODULES, '/usr/share/puppet/modules'].join(File::PATH_SEPARATOR)
  # rspec-puppet needs a manifest directory; an empty one: each spec declares what it tests.
  c.manifest_dir = Dir.mktmpdir('rspec-puppet-manifests-')
  c.hiera_config = File.join(REPO, 'hiera', 'hiera.yaml')
  c.strict_variables = true
  c.default_facts = {
    'os' => { 'family' => 'Debian', 'name' => 'Debian', 'release' => { 'major' => '12' } },
    'networking' => { 'fqdn' => 'testhost.example.org' },
  }
  c.after(:suite) { FileUtils.rm_rf(c.manifest_dir) }
end

# The YAML document Puppet writes as the binary's configuration, parsed.
def config_yaml(content)
  YAML.safe_load(content)
end
