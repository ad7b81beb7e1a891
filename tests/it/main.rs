//! All integration tests, in one test binary (one link, one place for the helpers). One file
//! per capability, named as in `src/`; the worlds they build (a temp tree and config, a private
//! containerd, the test Kubernetes API server, a deployer group) live in `support/`. They run
//! the real binary against real tools.

mod cli;
mod editors;
mod group;
mod hold;
mod hostile;
mod image;
mod layout;
mod lease;
mod mediawiki;
mod motd;
mod node;
mod output;
mod packaging;
mod permissions;
mod puppet;
mod puppet_server;
mod release;
mod render;
mod request_path;
mod routing;
mod snapshots;
mod support;
mod sync;
mod sync_model;
mod systemd;
mod watch;
