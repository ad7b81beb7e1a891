//! All integration tests, in one test binary (one link, one place for the helpers).
//! They run the real binary against real tools; see `support` for the world each test builds.

mod support;
mod support_kube;

mod cli;
mod support_perm;

mod group;
mod permissions;
mod kube_api;
mod node;
mod render;
mod containerd;
mod sync;
mod packaging;
