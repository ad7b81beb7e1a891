//! Helpers for the tests that run the binary against the test API server with the real kubectl.

use crate::support::kube_api::ApiServer;
use crate::support::{unique, Out, World};
use std::time::{Duration, Instant};

/// A world whose config points at `api`, for a Node called `node`, with the switch `enabled`
/// and `extra` YAML (more `kubernetes:` keys go in `kube_extra`, indented as mapping entries).
pub fn kube_world(api: &ApiServer, node: &str, enabled: bool, kube_extra: &str) -> World {
    World::new(&format!(
        "enabled: {enabled}\nnode_name: {node}\nkubernetes:\n  kubeconfig: {}\n  timeout_seconds: 2\n{kube_extra}",
        api.kubeconfig().display()
    ))
}

/// A unique Node name.
pub fn node_name() -> String {
    unique("wikikube-worker-exp")
}

/// Runs the binary with kubectl's discovery cache inside the API server's temp dir (so tests
/// never share or leave one behind); returns the result and how long it took.
pub fn run(w: &World, api: &ApiServer, args: &[&str]) -> (Out, Duration) {
    let cache = api
        .kubeconfig()
        .parent()
        .expect("dir")
        .join("kubectl-cache");
    let t = Instant::now();
    let out = w
        .cmd()
        .env("KUBECACHEDIR", cache)
        .args(args)
        .output()
        .expect("run mw-experimental");
    (Out::of(out), t.elapsed())
}
