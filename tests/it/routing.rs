//! `routing`: the real kubectl lists the Nodes that carry every managed label from the test API
//! server; a Node switched off by `apply node` drops out, one switched on appears; the Lua text
//! loads in Debian's lua5.1 and a Lua lookup of each backend gives its host and port.

use crate::support::kube::{kube_world, node_name, run};
use crate::support::kube_api::{node, ApiServer};
use crate::support::*;
use serde_json::{json, Value};
use std::process::Command;

/// A Node the way a kubelet registers it: a short name, its data centre, an InternalIP.
fn registered(name: &str, dc: &str, ip: &str) -> Value {
    let mut n = node(name, &[("topology.kubernetes.io/region", dc)], &[]);
    n["status"]["addresses"] = json!([
        {"type": "InternalIP", "address": ip},
        {"type": "Hostname", "address": name}
    ]);
    n
}

/// Loads `entries` (the routing output) into a table, as WMF's x-wikimedia-debug-routing.lua
/// holds them, and prints `backend host port` for each backend asked for, or `missing`.
fn lua_lookup(entries: &str, backends: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("lookup.lua");
    let mut text = format!("local debug_map = {{\n{entries}}}\n");
    for b in backends {
        text.push_str(&format!(
            "local t = debug_map[\"{b}\"]\nif t then print(\"{b}\", t.host, t.port) else print(\"{b}\", \"missing\") end\n"
        ));
    }
    text.push_str("local n = 0 for _ in pairs(debug_map) do n = n + 1 end print(\"count\", n)\n");
    std::fs::write(&script, text).unwrap();
    sh(Command::new("lua5.1").arg(&script))
}

#[test]
fn routing_follows_the_switch_and_loads_in_lua() {
    let (a, b) = (node_name(), node_name());
    let api = ApiServer::start(vec![
        registered(&a, "eqiad", "10.64.0.11"),
        registered(&b, "codfw", "10.192.0.12"),
        node("unrelated", &[("dedicated", "other")], &[]),
    ]);
    let wa = kube_world(&api, &a, true, "");
    let wb = kube_world(&api, &b, false, "");
    let (ba, bb) = (
        format!("k8s-mw-experimental-eqiad-{a}"),
        format!("k8s-mw-experimental-codfw-{b}"),
    );

    run(&wa, &api, &["apply", "node"]).0.code(0);
    api.clear_log();
    let (out, _) = run(&wa, &api, &["routing"]);
    out.code(0);
    // One list request, selecting by the managed labels.
    let gets: Vec<_> = api
        .log()
        .into_iter()
        .filter(|r| r.path == "/api/v1/nodes")
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(
        gets[0]
            .query
            .contains("labelSelector=dedicated%3Dmw-experimental"),
        "{gets:?}"
    );
    assert!(out.stdout.starts_with("-- mw-experimental: 1 X-Wikimedia-Debug backend from the Nodes labelled dedicated=mw-experimental"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "[\"{ba}\"] = {{ host = \"10.64.0.11\", port = 4456 }},\n"
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        lua_lookup(&out.stdout, &[&ba, &bb]),
        format!("{ba}\t10.64.0.11\t4456\n{bb}\tmissing\ncount\t1\n")
    );

    // b switched on: it appears.
    wb.write_config(&format!(
        "enabled: true\nnode_name: {b}\nkubernetes:\n  kubeconfig: {}\n  timeout_seconds: 2\n",
        api.kubeconfig().display()
    ));
    run(&wb, &api, &["apply", "node"]).0.code(0);
    let (out, _) = run(&wa, &api, &["routing"]);
    out.code(0);
    assert_eq!(
        lua_lookup(&out.stdout, &[&ba, &bb]),
        format!("{ba}\t10.64.0.11\t4456\n{bb}\t10.192.0.12\t4456\ncount\t2\n")
    );

    // a switched off: it drops out, and --json says the same.
    wa.write_config(&format!(
        "enabled: false\nnode_name: {a}\nkubernetes:\n  kubeconfig: {}\n  timeout_seconds: 2\n",
        api.kubeconfig().display()
    ));
    run(&wa, &api, &["apply", "node"]).0.code(0);
    let (out, _) = run(&wa, &api, &["routing"]);
    out.code(0);
    assert_eq!(
        lua_lookup(&out.stdout, &[&ba, &bb]),
        format!("{ba}\tmissing\n{bb}\t10.192.0.12\t4456\ncount\t1\n")
    );
    let (out, _) = run(&wa, &api, &["--json", "routing"]);
    out.code(0);
    assert_eq!(
        out.json()["entries"],
        json!([{"backend": bb, "host": "10.192.0.12", "port": 4456, "node": b, "datacenter": "codfw"}])
    );
}

#[test]
fn a_hand_made_list_and_a_dead_api_server() {
    let w = World::new("node_name: exp1\nservice: { node_port: 30443 }\n");
    let out = w.run(&[
        "routing",
        "--node",
        "wikikube-worker-exp1001.eqiad.wmnet",
        "--node",
        "exp9=10.0.0.9",
    ]);
    out.code(0);
    assert_eq!(
        lua_lookup(
            &out.stdout,
            &["k8s-mw-experimental-eqiad-wikikube-worker-exp1001", "k8s-mw-experimental-exp9"]
        ),
        "k8s-mw-experimental-eqiad-wikikube-worker-exp1001\twikikube-worker-exp1001.eqiad.wmnet\t30443\nk8s-mw-experimental-exp9\t10.0.0.9\t30443\ncount\t2\n"
    );
    w.run(&["routing", "--node", "a=b c"])
        .code(2)
        .stderr_has("NAME=HOST");

    // The API server down: kubectl's message and what to check, within the time limit.
    let api = ApiServer::start(vec![]);
    let w = kube_world(&api, "exp1", true, "");
    api.set_fault(crate::support::kube_api::Fault::Hang);
    let (out, took) = run(&w, &api, &["routing"]);
    out.code(2)
        .stderr_has("listing the Nodes that carry every managed label");
    assert!(took < std::time::Duration::from_secs(6), "{took:?}");
}
