//! All integration tests, in one test binary (one link, one place for the helpers). One file
//! per capability, named as in `src/`; the worlds they build (a temp tree and config, a private
//! containerd, the test Kubernetes API server, a deployer group) live in `support/`. They run
//! the real binary against real tools.

mod support;

mod cli;
mod group;
mod hostile;
mod image;
mod layout;
mod node;
mod packaging;
mod permissions;
mod puppet;
mod release;
mod render;
mod request_path;
mod routing;
mod sync;
mod sync_model;
