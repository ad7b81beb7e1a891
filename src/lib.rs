//! mw-experimental: the node side of a MediaWiki-on-Kubernetes test service.
//!
//! One binary does every action on a node: Puppet runs `plan`/`apply`, Facter runs `facts`, a
//! systemd timer runs `sync`, engineers run `status`, `diff` and `reset`. Each capability is one
//! module; they talk through plain data ([`plan::ComponentPlan`], [`state::State`]).

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod exit_codes;
pub mod facts;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod state;
pub mod status;

pub mod acl;
pub mod permissions;
pub mod walk;

pub mod components;
pub mod kube;
pub mod render;

pub mod fsat;
pub mod image;
pub mod sync;

pub use commands::main;

// `crate::permissions` names `crate::group::resolve`; it moves into `components/` next, and then
// this alias goes.
pub use components::group;

/// The tool's version, as recorded in the state and the fact.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
