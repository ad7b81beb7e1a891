//! Acceptance (issue 11): the module on the real Puppet stack. A Puppet server compiles
//! `profile::mw_experimental` from an environment holding `puppet-module/` and `hiera/`, PuppetDB
//! (on PostgreSQL) stores facts and reports, and `puppet agent -t` runs on this machine as the
//! node, against the test Kubernetes API server (real kubectl). Then `mw-experimental fleet`
//! reads that PuppetDB with the node's own certificate. One test, in sequence: the stack takes
//! a minute to start, and the external fact goes where Facter reads it under `puppet agent`,
//! `/etc/facter/facts.d`.

use crate::support::kube_api::{node, ApiServer, Fault};
use crate::support::perm::{snapshot, GroupGuard, UserGuard};
use crate::support::puppet_stack::Stack;
use crate::support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const FACTS_DIR: &str = "/etc/facter/facts.d";

/// Removes the fact link this test put in Facter's directory (and the directories it made),
/// however the test ends.
struct FactLink {
    link: PathBuf,
    made: Vec<PathBuf>,
}
impl Drop for FactLink {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.link).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&self.link);
        }
        for d in self.made.iter().rev() {
            let _ = std::fs::remove_dir(d); // only if empty
        }
    }
}

/// The events of the component resources in a report, as (title, status, message).
fn component_events(events: &[Value]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = events
        .iter()
        .filter(|e| e["resource_type"] == "Mw_experimental_component")
        .map(|e| {
            (
                e["resource_title"].as_str().unwrap_or("").to_string(),
                e["status"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn agent_against_a_puppet_server_reports_each_component_and_fleet_reads_puppetdb() {
    for tool in [
        "puppet",
        "puppetserver",
        "java",
        "curl",
        "kubectl",
        "setfacl",
    ] {
        assert!(have(tool), "{tool} is missing: run tests/install-deps");
    }
    let link = Path::new(FACTS_DIR).join("mw_experimental");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "{} exists already: this test puts the fact there and removes it afterwards; remove it first",
        link.display()
    );
    let made: Vec<PathBuf> = ["/etc/facter", FACTS_DIR]
        .iter()
        .map(PathBuf::from)
        .filter(|d| !d.exists())
        .collect();
    std::fs::create_dir_all(FACTS_DIR).unwrap();
    let _link = FactLink { link, made };

    let this = format!("{}.mwx.test", unique("node"));
    let stack = Stack::up(&[&this]);
    let t = tempfile::Builder::new()
        .prefix("mwx-agent-")
        .tempdir()
        .unwrap();
    let group = GroupGuard::reserve();
    let owner = UserGuard::create();
    let member = UserGuard::create();
    let name = unique("wikikube-worker-exp");
    let api = ApiServer::start(vec![node(&name, &[], &[])]);

    // The tree: root, one directory, two files, all root's and without ACLs.
    let code = t.path().join("srv/mediawiki");
    std::fs::create_dir_all(code.join("includes")).unwrap();
    std::fs::write(code.join("index.php"), "<?php\n").unwrap();
    std::fs::write(code.join("includes/Setup.php"), "<?php\n").unwrap();
    let config = t.path().join("etc/config.yaml");
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    std::fs::write(
        stack.layer(),
        format!(
            "---\n\
             profile::mw_experimental::enabled: true\n\
             profile::mw_experimental::manage_package: false\n\
             profile::mw_experimental::manage_timer: false\n\
             profile::mw_experimental::binary: {bin}\n\
             profile::mw_experimental::node_name: {name}\n\
             profile::mw_experimental::code_path: {code}\n\
             profile::mw_experimental::code_owner: {owner}\n\
             profile::mw_experimental::deployers_group: {group}\n\
             profile::mw_experimental::deployers_gid: {gid}\n\
             profile::mw_experimental::deployers_members: [{member}]\n\
             profile::mw_experimental::state_dir: {dir}/state\n\
             profile::mw_experimental::metrics_file: {dir}/metrics/mw_experimental.prom\n\
             profile::mw_experimental::config_dir: {dir}/etc\n\
             profile::mw_experimental::facts_dir: {FACTS_DIR}\n\
             profile::mw_experimental::kubectl: /usr/bin/kubectl\n\
             profile::mw_experimental::kubernetes_timeout: 3\n\
             profile::mw_experimental::kubeconfig: {kubeconfig:?}\n",
            bin = bin().display(),
            code = code.display(),
            owner = owner.name,
            member = member.name,
            group = group.name,
            gid = group.gid,
            dir = t.path().display(),
        ),
    )
    .unwrap();
    let cache = t.path().join("kubectl-cache");
    let env: [(&str, &Path); 2] = [
        ("MW_EXPERIMENTAL_CONFIG", &config),
        ("KUBECACHEDIR", &cache),
    ];
    let mut runs = 0;
    let mut agent = |args: &[&str]| {
        runs += 1;
        let (rc, out) = stack.agent(&this, args, &env);
        let report = stack.wait_reports(&this, &this, runs);
        let events = stack.events(&this, report["hash"].as_str().unwrap());
        (rc, out, report, events)
    };

    // Switch on: exit 2, one event per component, each naming its drift by kind and count.
    let (rc, out, _, events) = agent(&[]);
    assert_eq!(rc, 2, "first run: changes, no failure\n{out}");
    let ev = component_events(&events);
    assert_eq!(
        ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["group", "node", "permissions"],
        "{ev:?}"
    );
    assert!(ev.iter().all(|e| e.1 == "success"), "{ev:?}");
    assert!(ev[0].2.starts_with("converged group 1"), "{ev:?}");
    assert_eq!(ev[1].2, "converged label 1, taint 2", "{ev:?}");
    // root: owner, group, mode, acl, default acl; includes/: group, mode, acl, default acl;
    // the two files: acl.
    assert_eq!(
        ev[2].2, "converged acl 4, default_acl 2, group 2, mode 2, owner 1",
        "{ev:?}"
    );
    assert!(
        !out.contains(api.token()),
        "the kubeconfig's token reached Puppet's output"
    );

    // Converged: exit 0, no event at all.
    let (rc, out, report, events) = agent(&[]);
    assert_eq!(rc, 0, "second run: nothing to change\n{out}");
    assert_eq!(events, Vec::<Value>::new(), "{out}");
    assert_eq!(report["status"], "unchanged");

    // An ACL removed by hand: exactly that one change, on permissions.
    let file = code.join("includes/Setup.php");
    sh(Command::new("setfacl")
        .arg("-x")
        .arg(format!("g:{}", group.gid))
        .arg(&file));
    let (rc, out, _, events) = agent(&[]);
    assert_eq!(rc, 2, "a run after a hand-made drift\n{out}");
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = component_events(&events);
    assert_eq!(
        (ev[0].0.as_str(), ev[0].1.as_str()),
        ("permissions", "success"),
        "{ev:?}"
    );
    // Puppet adds " (corrective)": the resource was in sync on the last run.
    assert!(ev[0].2.starts_with("converged acl 1"), "{ev:?}");

    // --noop with drift pending in all three: the report lists it per component, nothing changes.
    sh(Command::new("setfacl")
        .arg("-x")
        .arg(format!("g:{}", group.gid))
        .arg(&file));
    sh(Command::new("gpasswd").args(["-d", &member.name, &group.name]));
    let mut n = api.node(&name);
    n["spec"]["taints"] =
        json!([{"key": "dedicated", "value": "mw-experimental", "effect": "NoSchedule"}]);
    api.put_node(n);
    let tree = snapshot(&code);
    let node_before = api.node(&name);
    let group_before = sh(Command::new("getent").args(["group", &group.name]));
    let (rc, out, report, events) = agent(&["--noop"]);
    assert!(rc == 0 || rc == 2, "noop: exit {rc}\n{out}");
    assert_eq!(report["noop"], true);
    let ev = component_events(&events);
    let want = [
        ("group", "member 1"),
        ("node", "taint 1"),
        ("permissions", "acl 1"),
    ];
    assert_eq!(ev.len(), 3, "{ev:?}\n{out}");
    for ((title, status, message), (c, drift)) in ev.iter().zip(want) {
        assert_eq!((title.as_str(), status.as_str()), (c, "noop"), "{ev:?}");
        assert!(
            message.starts_with(&format!(
                "current_value drifted ({drift}), should be converged (noop)"
            )),
            "{ev:?}"
        );
    }
    crate::support::perm::assert_same(&tree, &snapshot(&code));
    assert_eq!(api.node(&name), node_before, "noop changed the Node");
    assert_eq!(
        sh(Command::new("getent").args(["group", &group.name])),
        group_before,
        "noop changed the group"
    );

    // The API server answers 500: node fails with the tool's message, the others converge.
    api.set_fault(Fault::NodeStatus(500));
    let (rc, out, _, events) = agent(&[]);
    assert!(
        rc == 4 || rc == 6,
        "a failing API server fails the run (got {rc})\n{out}"
    );
    let ev = component_events(&events);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!((ev[0].0.as_str(), ev[0].1.as_str()), ("group", "success"));
    assert_eq!(
        (ev[2].0.as_str(), ev[2].1.as_str()),
        ("permissions", "success")
    );
    assert!(ev[2].2.starts_with("converged acl 1"), "{ev:?}");
    assert_eq!(
        (ev[1].0.as_str(), ev[1].1.as_str()),
        ("node", "failure"),
        "{ev:?}"
    );
    assert!(
        ev[1].2.contains("mw-experimental apply node failed") && ev[1].2.contains(&name),
        "the tool's message, naming the node: {ev:?}"
    );
    assert!(
        out.contains("Mw_experimental_component[node]"),
        "the failure names the resource\n{out}"
    );
    api.set_fault(Fault::None);
    let (rc, out, _, _) = agent(&[]);
    assert_eq!(
        rc, 2,
        "the run after the API server recovered converges\n{out}"
    );
    // This run's facts (sent before it applies) show the node converged.
    let (rc, out, _, _) = agent(&[]);
    assert_eq!(rc, 0, "{out}");

    // Two more nodes, whose facts the test submits as their agents would: one on and converged
    // at an image, with edits; one on and converged but three hours old (stale).
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let old = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600),
    )
    .to_string();
    let submit = |certname: &str, at: &str, fact: Value| {
        stack.command(
            &this,
            "replace_facts",
            5,
            certname,
            &json!({"certname": certname, "environment": "production", "producer_timestamp": at,
                    "producer": stack.get("SERVER_CERTNAME"), "values": {"mw_experimental": fact}}),
        );
    };
    let fresh = "wikikube-worker-exp1002.mwx.test";
    let stale = "wikikube-worker-exp1003.mwx.test";
    submit(
        fresh,
        &now,
        json!({"enabled": true, "converged": true, "state": "known",
               "node": {"name": "wikikube-worker-exp1002", "converged": true},
               "code": {"image": "docker-registry.example/restricted/mediawiki-multiversion:2026-11-20-101010-publish-7",
                        "local_edits": 4, "synced_at": "2026-11-26T03:00:00Z"}}),
    );
    submit(
        stale,
        &old,
        json!({"enabled": true, "converged": true, "state": "known",
               "node": {"name": "wikikube-worker-exp1003", "converged": true},
               "code": {"image": "docker-registry.example/restricted/mediawiki-multiversion:2026-11-19-101010-publish-1",
                        "local_edits": 0}}),
    );
    let fleet = |args: &[&str]| {
        let mut cmd = Command::new(bin());
        // This node's configuration, as Puppet wrote it: the routing prefix and port are its.
        cmd.arg("--config")
            .arg(&config)
            .arg("fleet")
            .arg("--puppetdb")
            .arg(stack.get("PUPPETDB_URL"))
            .arg("--ssldir")
            .arg(stack.ssldir(&this))
            .args(["--stale-after", "1h"])
            .args(args);
        Out::of(cmd.output().unwrap())
    };
    // PuppetDB stores commands in the background: wait for all three nodes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let nodes = loop {
        let o = fleet(&["--json"]);
        o.code(0);
        let nodes = o.json()["nodes"].as_array().unwrap().clone();
        if nodes.len() >= 3 || std::time::Instant::now() > deadline {
            break nodes;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let by = |c: &str| -> Value {
        nodes
            .iter()
            .find(|n| n["certname"] == c)
            .unwrap_or_else(|| panic!("{c} is not in the fleet: {nodes:?}"))
            .clone()
    };
    let me = by(&this);
    assert_eq!(
        (
            &me["enabled"],
            &me["converged"],
            &me["stale"],
            &me["node_name"]
        ),
        (&json!(true), &json!(true), &json!(false), &json!(name)),
        "{me}"
    );
    assert_eq!(me["image"], Value::Null, "this node never synced: {me}");
    let f = by(fresh);
    assert_eq!(
        (
            &f["enabled"],
            &f["converged"],
            &f["image"],
            &f["edits"],
            &f["stale"]
        ),
        (
            &json!(true),
            &json!(true),
            &json!("2026-11-20-101010-publish-7"),
            &json!(4),
            &json!(false)
        ),
        "{f}"
    );
    let s = by(stale);
    assert_eq!((&s["stale"], &s["edits"]), (&json!(true), &json!(0)), "{s}");

    let text = fleet(&[]);
    text.code(0);
    assert!(
        text.stdout
            .starts_with("3 nodes with the mw_experimental fact: 3 on, 2 on and converged with fresh facts, 1 stale"),
        "{}",
        text.stdout
    );
    let line = |c: &str| {
        text.stdout
            .lines()
            .find(|l| l.starts_with(c))
            .unwrap_or_else(|| panic!("no line for {c}:\n{}", text.stdout))
            .to_string()
    };
    assert!(line(stale).contains("STALE 3h"), "{}", text.stdout);
    assert!(
        line(fresh).contains("2026-11-20-101010-publish-7"),
        "{}",
        text.stdout
    );

    let routing = fleet(&["--routing"]);
    routing.code(0);
    let (summary, entries) = routing.stdout.split_once('\n').unwrap();
    assert!(
        summary.starts_with("-- 2 of 3 nodes with the mw_experimental fact"),
        "{}",
        routing.stdout
    );
    let short = this.split('.').next().unwrap();
    assert_eq!(
        entries,
        format!(
            "[\"k8s-mw-experimental-mwx-{short}\"] = {{ host = \"{this}\", port = 4456 }},\n\
             [\"k8s-mw-experimental-mwx-wikikube-worker-exp1002\"] = {{ host = \"{fresh}\", port = 4456 }},\n"
        ),
        "only the nodes on, converged and fresh, as routing's Lua entries"
    );
}
