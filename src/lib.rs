//! mw-experimental: the node side of a MediaWiki-on-Kubernetes test service.
//!
//! One binary does every action on a node: Puppet runs `plan`/`apply`, Facter runs `facts`, a
//! systemd timer runs `sync`, engineers run `status`, `diff` and `reset`. The modules form
//! layers, and a lower layer never names a higher one (ARCHITECTURE.md draws them;
//! `tests/it/layout.rs` checks them); they talk through plain data ([`plan::ComponentPlan`],
//! [`state::State`]).

// Primitives: configuration, plans, the state file and lock, exit codes, logging, and the
// fd-relative filesystem code. They know nothing of components or commands.
pub mod config;
pub mod exit_codes;
pub mod fs;
pub mod logging;
pub mod plan;
pub mod progress;
pub mod state;
pub mod tsv;

// Capabilities: one thing the node can do (look up accounts, apply the permission policy to an
// entry, read an image, sync a tree, run kubectl, render the workload, build the fact, write
// metrics, read PuppetDB and the fleet in it), with no policy of which component wants it.
pub mod accounts;
pub mod facts;
pub mod fleet;
pub mod hold;
pub mod image;
pub mod kube;
pub mod metrics;
pub mod motd;
pub mod policy;
pub mod puppetdb;
pub mod render;
pub mod routing;
pub mod sync;

// Components: the four of DESIGN.md, each a check and an apply over the capabilities.
pub mod components;

// Commands: one file per subcommand, on top of the components; `main` is the program.
pub mod commands;

// The command line: clap types only, read by `commands`; it imports nothing from the crate.
pub mod cli;

pub use commands::main;

/// The tool's version, as recorded in the state and the fact.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
