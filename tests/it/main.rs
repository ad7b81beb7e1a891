//! All integration tests, in one test binary (one link, one place for the helpers).
//! They run the real binary against real tools; see `support` for the world each test builds.

mod support;
mod support_kube;

mod cli;
mod support_perm;

mod containerd;
mod group;
mod kube_api;
mod node;
mod packaging;
mod permissions;
mod puppet;
mod render;
mod sync;
