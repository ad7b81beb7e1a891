//! The `node` component against the real kubectl and the test API server: the Node object as
//! the API server holds it is what these tests check.

use crate::support::kube::{kube_world, node_name, run};
use crate::support::kube_api::{node, ApiServer, Fault};
use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

const MANAGED_TAINTS: [&str; 2] = [
    "dedicated=mw-experimental:NoSchedule",
    "dedicated=mw-experimental:NoExecute",
];

/// Foreign taints: another key, the same key with another value and effect.
const FOREIGN_TAINTS: [(&str, &str, &str); 3] = [
    ("node.kubernetes.io/unschedulable", "", "NoSchedule"),
    ("dedicated", "other", "PreferNoSchedule"),
    ("example.org/maintenance", "yes", "NoExecute"),
];

/// Foreign taints: the same key and value as a managed one with another effect, and another key
/// with the managed value.
const FOREIGN_TAINTS_B: [(&str, &str, &str); 2] = [
    ("dedicated", "mw-experimental", "PreferNoSchedule"),
    ("example.org/pool", "mw-experimental", "NoSchedule"),
];

fn strings(taints: &[(&str, &str, &str)]) -> Vec<String> {
    taints
        .iter()
        .map(|(k, v, e)| format!("{k}={v}:{e}"))
        .collect()
}

#[track_caller]
fn assert_has_all(have: &[String], want: &[String]) {
    for w in want {
        assert!(have.contains(w), "taint {w} missing from {have:?}");
    }
}

#[test]
fn switch_on_labels_and_taints_the_node_and_a_second_apply_sends_no_patch() {
    let name = node_name();
    let api = ApiServer::start(vec![node(
        &name,
        &[("team", "sre"), ("topology.kubernetes.io/zone", "row-a")],
        &FOREIGN_TAINTS,
    )]);
    let w = kube_world(&api, &name, true, "");

    let (out, _) = run(&w, &api, &["plan", "node"]);
    out.code(1);
    assert!(api.patches(&name).is_empty(), "plan sent a PATCH");

    let (out, _) = run(&w, &api, &["apply", "node"]);
    out.code(0);
    let labels = api.labels(&name);
    assert_eq!(labels["dedicated"], "mw-experimental");
    assert_eq!(labels["team"], "sre", "a foreign label was lost");
    assert_eq!(labels["topology.kubernetes.io/zone"], "row-a");
    let taints = api.taints(&name);
    assert_has_all(&taints, &MANAGED_TAINTS.map(String::from));
    assert_has_all(&taints, &strings(&FOREIGN_TAINTS));
    assert_eq!(taints.len(), 5, "{taints:?}");
    let patches = api.patches(&name);
    assert_eq!(
        patches.len(),
        1,
        "one PATCH converges the Node: {patches:?}"
    );
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    let body: serde_json::Value = serde_json::from_str(&patches[0].body).unwrap();
    assert!(
        body["metadata"]["resourceVersion"].is_string(),
        "the PATCH is not guarded by resourceVersion: {body}"
    );

    api.clear_log();
    let (out, _) = run(&w, &api, &["apply", "node"]);
    out.code(0);
    assert!(
        api.patches(&name).is_empty(),
        "a converged Node got a PATCH: {:?}",
        api.patches(&name)
    );
    assert!(
        api.log()
            .iter()
            .any(|r| r.method == "GET" && r.path == format!("/api/v1/nodes/{name}")),
        "apply did not read the Node"
    );
    run(&w, &api, &["plan", "node"]).0.code(0);

    // The fact reports what apply saw.
    let fact = w.run(&["facts"]).json();
    let n = &fact["mw_experimental"]["node"];
    assert_eq!(n["name"], name.as_str(), "{fact}");
    assert_eq!(n["labels"]["dedicated"], "mw-experimental", "{fact}");
    assert_eq!(n["taints"].as_array().map(Vec::len), Some(2), "{fact}");
    assert_eq!(n["foreign_taints"], 3, "{fact}");
}

#[test]
fn switch_off_removes_exactly_the_managed_labels_and_taints() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[("team", "sre")], &FOREIGN_TAINTS_B)]);
    let on = kube_world(&api, &name, true, "");
    run(&on, &api, &["apply", "node"]).0.code(0);
    assert_has_all(&api.taints(&name), &strings(&FOREIGN_TAINTS_B));
    assert_has_all(&api.taints(&name), &MANAGED_TAINTS.map(String::from));
    assert_eq!(api.taints(&name).len(), 4);

    let off = kube_world(&api, &name, false, "");
    let (out, _) = run(&off, &api, &["plan", "node"]);
    out.code(1);
    let (out, _) = run(&off, &api, &["apply", "node"]);
    out.code(0);
    let labels = api.labels(&name);
    assert!(!labels.contains_key("dedicated"), "{labels:?}");
    assert_eq!(labels["team"], "sre");
    assert_eq!(labels["kubernetes.io/hostname"], name);
    let mut taints = api.taints(&name);
    let mut want = strings(&FOREIGN_TAINTS_B);
    taints.sort();
    want.sort();
    assert_eq!(
        taints, want,
        "switch off must leave exactly the foreign taints"
    );

    api.clear_log();
    run(&off, &api, &["apply", "node"]).0.code(0);
    assert!(api.patches(&name).is_empty());
    run(&off, &api, &["plan", "node"]).0.code(0);
}

#[test]
fn switch_off_leaves_a_managed_key_that_carries_another_value() {
    let name = node_name();
    let api = ApiServer::start(vec![node(
        &name,
        &[("dedicated", "kask")],
        &[("dedicated", "kask", "NoSchedule")],
    )]);
    let off = kube_world(&api, &name, false, "");
    run(&off, &api, &["apply", "node"]).0.code(0);
    assert!(api.patches(&name).is_empty());
    assert_eq!(api.labels(&name)["dedicated"], "kask");
    assert_eq!(api.taints(&name), vec!["dedicated=kask:NoSchedule"]);
}

#[test]
fn configured_extra_labels_and_taints_are_managed_too() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[], &[])]);
    let extra = "  labels: { dedicated: mw-experimental, example.org/pool: exp }\n  taints:\n    - { key: dedicated, value: mw-experimental, effect: NoSchedule }\n    - { key: example.org/debug, effect: PreferNoSchedule }\n";
    let w = kube_world(&api, &name, true, extra);
    run(&w, &api, &["apply", "node"]).0.code(0);
    assert_eq!(api.labels(&name)["example.org/pool"], "exp");
    assert_eq!(
        api.taints(&name),
        vec![
            "dedicated=mw-experimental:NoSchedule",
            "example.org/debug=:PreferNoSchedule"
        ]
    );
    let off = kube_world(&api, &name, false, extra);
    run(&off, &api, &["apply", "node"]).0.code(0);
    assert!(api.taints(&name).is_empty());
    assert!(!api.labels(&name).contains_key("example.org/pool"));
}

#[test]
fn a_concurrent_write_is_not_lost_the_patch_is_retried_after_a_conflict() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[], &[("foreign", "x", "NoSchedule")])]);
    let w = kube_world(&api, &name, true, "");
    api.set_fault(Fault::ConcurrentWriteOnce);
    let (out, _) = run(&w, &api, &["apply", "node"]);
    out.code(0);
    let patches = api.patches(&name);
    assert_eq!(patches.len(), 2, "a conflict, then a retry: {patches:?}");
    let labels = api.labels(&name);
    assert_eq!(
        labels["concurrent/writer"], "1",
        "the concurrent write was lost"
    );
    assert_eq!(labels["dedicated"], "mw-experimental");
    assert_eq!(api.taints(&name).len(), 3);
}

/// Runs `apply` and `plan` against a failing API server: both exit 2 within timeout + 2 s and
/// name the node and the cause; `facts` answers at once and reports the error.
fn fails_cleanly(fault: Fault, cause: &str) {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[("team", "sre")], &[])]);
    let w = kube_world(&api, &name, true, "");
    api.set_fault(fault);
    let limit = Duration::from_secs(2 + 2);
    for cmd in ["apply", "plan"] {
        let (out, took) = run(&w, &api, &[cmd, "node"]);
        out.code(2).stderr_has(&name).stderr_has(cause);
        assert!(
            took < limit,
            "{cmd} under {fault:?} took {took:?}\n{}",
            out.stderr
        );
    }
    let left = processes_using(api.kubeconfig());
    assert!(
        left.is_empty(),
        "kubectl still runs after {fault:?}: {left:?}"
    );
    let t = Instant::now();
    let fact = w.run(&["facts"]);
    let took = t.elapsed();
    fact.code(0);
    assert!(took < Duration::from_secs(1), "facts took {took:?}");
    let fact = fact.json();
    let node = &fact["mw_experimental"]["node"];
    assert!(
        node["error"]
            .as_str()
            .is_some_and(|e| e.contains(&name) && e.contains(cause)),
        "the fact does not report the node error: {fact}"
    );
    assert_eq!(fact["mw_experimental"]["converged"], false);
    api.set_fault(Fault::None);
    assert!(api.patches(&name).is_empty());
}

/// The command lines of running processes that name `path` (kubectl runs that outlived us).
fn processes_using(path: &std::path::Path) -> Vec<String> {
    let needle = path.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                out.push(cmd);
            }
        }
    }
    out
}

#[test]
fn api_server_down_fails_within_the_timeout_naming_node_and_cause() {
    fails_cleanly(Fault::Down, "refused");
}

#[test]
fn api_server_forbidding_fails_within_the_timeout_naming_node_and_cause() {
    fails_cleanly(Fault::NodeStatus(403), "Forbidden");
}

#[test]
fn api_server_hanging_fails_within_the_timeout_and_kubectl_is_killed() {
    fails_cleanly(Fault::Hang, "timeout_seconds");
}

#[test]
fn api_server_error_fails_naming_node_and_cause() {
    fails_cleanly(Fault::NodeStatus(500), "InternalError");
}

#[test]
fn a_forbidden_patch_is_an_error_and_changes_nothing() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[], &[])]);
    let w = kube_world(&api, &name, true, "");
    api.set_fault(Fault::PatchStatus(403));
    let (out, _) = run(&w, &api, &["apply", "node"]);
    out.code(2)
        .stderr_has(&name)
        .stderr_has("Forbidden")
        .stderr_has("RBAC");
    assert!(!api.labels(&name).contains_key("dedicated"));
}

#[test]
fn an_unknown_node_is_an_error_that_says_to_set_node_name() {
    let api = ApiServer::start(vec![node(&node_name(), &[], &[])]);
    let missing = node_name();
    let w = kube_world(&api, &missing, true, "");
    let (out, _) = run(&w, &api, &["plan", "node"]);
    out.code(2)
        .stderr_has(&missing)
        .stderr_has("NotFound")
        .stderr_has("node_name");
}

#[test]
fn a_wrong_token_is_refused_and_reported() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[], &[])]);
    let bad = api.kubeconfig().with_file_name("bad-kubeconfig");
    let text = std::fs::read_to_string(api.kubeconfig()).unwrap();
    std::fs::write(&bad, text.replace(api.token(), "not-the-token")).unwrap();
    let w = World::new(&format!(
        "enabled: true\nnode_name: {name}\nkubernetes: {{ kubeconfig: {}, timeout_seconds: 2 }}\n",
        bad.display()
    ));
    let (out, _) = run(&w, &api, &["apply", "node"]);
    out.code(2).stderr_has(&name).stderr_has("credentials");
    assert!(api.log().iter().all(|r| !r.authorized));
}

#[test]
fn a_missing_kubectl_is_a_clear_error() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[], &[])]);
    let w = kube_world(&api, &name, true, "  kubectl: /nonexistent/kubectl\n");
    let (out, _) = run(&w, &api, &["plan", "node"]);
    out.code(2)
        .stderr_has("/nonexistent/kubectl")
        .stderr_has("not found")
        .stderr_has(&name);
    assert!(api.log().is_empty());
}

/// The test API server itself, driven by kubectl's own label and taint commands (which send
/// strategic merge patches): labels merge by key and `key-` deletes, and a taint change
/// replaces the whole list, which kubectl computes from what it read.
#[test]
fn the_test_api_server_speaks_strategic_merge_patch_to_kubectl() {
    let name = node_name();
    let api = ApiServer::start(vec![node(
        &name,
        &[("a", "1")],
        &[("x", "y", "NoSchedule")],
    )]);
    let kubectl_out = |args: &[&str]| {
        Out::of(
            std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(api.kubeconfig())
                .env(
                    "KUBECACHEDIR",
                    api.kubeconfig().parent().unwrap().join("kubectl-cache"),
                )
                .args(args)
                .output()
                .expect("run kubectl"),
        )
    };
    let kubectl = |args: &[&str]| kubectl_out(args).code(0).stdout.clone();
    kubectl(&["label", "node", &name, "b=2"]);
    kubectl(&["label", "node", &name, "a-"]);
    kubectl(&["taint", "node", &name, "z=w:NoExecute"]);
    kubectl(&["taint", "node", &name, "x=y:NoSchedule-"]);
    let labels = api.labels(&name);
    assert_eq!(labels.get("b").map(String::as_str), Some("2"));
    assert!(!labels.contains_key("a"));
    assert_eq!(api.taints(&name), vec!["z=w:NoExecute"]);
    let kinds: Vec<String> = api
        .patches(&name)
        .into_iter()
        .map(|r| r.content_type)
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| k == "application/strategic-merge-patch+json"),
        "{kinds:?}"
    );
    // A duplicate taint (same key and effect) is refused as the real server refuses it.
    let out = kubectl_out(&[
        "patch",
        "node",
        &name,
        "--type=merge",
        "-p",
        r#"{"spec":{"taints":[{"key":"k","effect":"NoSchedule"},{"key":"k","value":"v","effect":"NoSchedule"}]}}"#,
    ]);
    out.code(1).stderr_has("Duplicate value");
    // Unknown nodes get a real NotFound Status.
    let out = kubectl_out(&["get", "node", "no-such-node"]);
    out.code(1)
        .stderr_has("Error from server (NotFound): nodes \"no-such-node\" not found");
}

#[test]
fn a_managed_taint_removed_by_hand_comes_back_on_the_next_apply() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[], &[])]);
    let w = kube_world(&api, &name, true, "");
    run(&w, &api, &["apply", "node"]).0.code(0);
    // An operator drops one of our taints and adds one of theirs.
    let mut n = api.node(&name);
    n["spec"]["taints"] = json!([
        {"key": "dedicated", "value": "mw-experimental", "effect": "NoSchedule"},
        {"key": "operator/hold", "value": "yes", "effect": "NoSchedule"}
    ]);
    api.put_node(n);
    let (out, _) = run(&w, &api, &["plan", "node", "--json"]);
    out.code(1);
    let plan = out.json();
    assert_eq!(plan["components"]["node"]["counts"]["taint"], 1, "{plan}");
    api.clear_log();
    run(&w, &api, &["apply", "node"]).0.code(0);
    assert_eq!(api.patches(&name).len(), 1);
    let mut taints = api.taints(&name);
    taints.sort();
    assert_eq!(
        taints,
        vec![
            "dedicated=mw-experimental:NoExecute",
            "dedicated=mw-experimental:NoSchedule",
            "operator/hold=yes:NoSchedule"
        ]
    );
}
