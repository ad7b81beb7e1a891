//! The foundation: configuration errors, the fact (through the real Facter), the state file,
//! the lock.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// A directory Facter can use as `--external-dir`: the binary linked as `mw_experimental`.
fn fact_dir(w: &World) -> std::path::PathBuf {
    let d = w.path().join("facts.d");
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::symlink(bin(), d.join("mw_experimental")).unwrap();
    d
}

fn facter(dir: &std::path::Path, config: Option<&std::path::Path>, query: &str) -> String {
    let mut cmd = Command::new("facter");
    cmd.arg("--external-dir").arg(dir).arg(query);
    match config {
        Some(c) => cmd.env("MW_EXPERIMENTAL_CONFIG", c),
        None => cmd.env_remove("MW_EXPERIMENTAL_CONFIG"),
    };
    sh(&mut cmd).trim().to_string()
}

#[test]
fn real_facter_reports_the_switch_off_without_config_and_on_with_one() {
    let w = World::new("enabled: true\n");
    let dir = fact_dir(&w);
    assert!(
        !std::path::Path::new("/etc/mw-experimental/config.yaml").exists(),
        "this machine has /etc/mw-experimental/config.yaml; the no-config case needs it absent"
    );
    assert_eq!(facter(&dir, None, "mw_experimental.enabled"), "false");
    assert_eq!(
        facter(&dir, Some(&w.config), "mw_experimental.enabled"),
        "true"
    );
    w.write_config("enabled: false\n");
    assert_eq!(
        facter(&dir, Some(&w.config), "mw_experimental.enabled"),
        "false"
    );
}

/// Every kind of bad configuration: exit 2, the message names the file and the key, and nothing
/// is written (no state directory, no metrics file).
#[test]
fn each_invalid_config_is_rejected_naming_file_and_key_and_nothing_is_written() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown top-level key",
            "enabled: true\nbogus_key: 1\n",
            "bogus_key",
        ),
        (
            "unknown nested key",
            "deployers: { group: deployment, colour: red }\n",
            "colour",
        ),
        (
            "malformed YAML",
            "enabled: true\nkubernetes: {labels: [\n",
            "line ",
        ),
        ("wrong type", "enabled: maybe\n", "enabled"),
        (
            "relative path",
            "image: { location: srv/image, source: directory }\n",
            "image.location",
        ),
        (
            "non-normalised path",
            "image: { source: directory, location: /srv/../etc }\n",
            "image.location",
        ),
        (
            "trailing slash",
            "image: { source: directory, location: /srv/img/ }\n",
            "image.location",
        ),
        (
            "mode not octal",
            "code: { path: /srv/x, mode: \"2795\" }\n",
            "code.mode",
        ),
        (
            "mode as a number",
            "code: { path: /srv/x, mode: 2775x }\n",
            "code.mode",
        ),
        ("gid zero", "deployers: { gid: 0 }\n", "deployers.gid"),
        (
            "gid too large",
            "deployers: { gid: 65534 }\n",
            "deployers.gid",
        ),
        (
            "invalid group name",
            "deployers: { group: \"Deploy Ment\" }\n",
            "deployers.group",
        ),
        (
            "invalid member name",
            "deployers: { members: [alice, \"bob;rm\"] }\n",
            "deployers.members[1]",
        ),
        (
            "invalid owner",
            "code: { path: /srv/x, owner: \"-root\" }\n",
            "code.owner",
        ),
        (
            "label key",
            "kubernetes: { labels: { \"bad key!\": x } }\n",
            "kubernetes.labels",
        ),
        (
            "label value",
            "kubernetes: { labels: { dedicated: \"-nope-\" } }\n",
            "kubernetes.labels.dedicated",
        ),
        (
            "taint effect",
            "kubernetes: { taints: [ { key: dedicated, value: x, effect: NoWay } ] }\n",
            "kubernetes.taints[0].effect",
        ),
        ("node name", "node_name: Not_A_Node\n", "node_name"),
        (
            "timeout",
            "kubernetes: { timeout_seconds: 0 }\n",
            "kubernetes.timeout_seconds",
        ),
    ];
    for (what, yaml, key) in cases {
        let w = World::new(yaml);
        for args in [&["apply"][..], &["plan"], &["sync"], &["config"]] {
            let out = w.run(args);
            assert_eq!(
                out.code,
                2,
                "{what}: `{}` exit code\n{}",
                args.join(" "),
                out.stderr
            );
            assert!(
                out.stderr.contains(key),
                "{what}: message lacks the key {key:?}:\n{}",
                out.stderr
            );
            assert!(
                out.stderr.contains(&w.config.display().to_string()),
                "{what}: message lacks the file:\n{}",
                out.stderr
            );
            assert!(
                out.stdout.is_empty(),
                "{what}: printed data despite the error: {}",
                out.stdout
            );
            assert!(
                !w.state_dir.exists(),
                "{what}: `{}` created the state dir",
                args.join(" ")
            );
            assert!(
                !w.metrics.exists(),
                "{what}: `{}` wrote metrics",
                args.join(" ")
            );
        }
    }
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let w = World::new("enabled: true\nkubernetes:\n  labels: {a: [\n");
    w.run(&["plan"])
        .code(2)
        .stderr_has("line 6 column")
        .stderr_has(&w.config.display().to_string());
}

#[test]
fn state_dir_inside_the_code_tree_is_refused() {
    let w = World::new("");
    let text = format!(
        "code: {{ path: {} }}\nstate_dir: {}/state\n",
        w.code.display(),
        w.code.display()
    );
    std::fs::write(&w.config, text).unwrap();
    w.run(&["apply"]).code(2).stderr_has("state_dir");
    assert!(!w.code.exists());
}

#[test]
fn a_missing_explicit_config_file_is_an_error() {
    let w = World::new("");
    let out = Out::of(
        Command::new(bin())
            .args(["--config", "/nonexistent/mwx.yaml", "plan"])
            .output()
            .unwrap(),
    );
    out.code(2).stderr_has("/nonexistent/mwx.yaml");
    drop(w);
}

#[test]
fn config_prints_the_effective_configuration_with_defaults() {
    let w = World::new("enabled: true\ndeployers: { members: [alice] }\n");
    let v = w.run(&["config", "--json"]).code(0).json();
    assert_eq!(v["enabled"], true);
    assert_eq!(v["deployers"]["members"][0], "alice");
    assert_eq!(
        v["deployers"]["gid"], 705,
        "defaults fill what the file leaves out"
    );
    assert_eq!(v["kubernetes"]["taints"].as_array().unwrap().len(), 2);
    let yaml = w.run(&["config"]).code(0).stdout.clone();
    // The YAML it prints is itself a valid configuration that means the same.
    std::fs::write(&w.config, &yaml).unwrap();
    assert_eq!(w.run(&["config", "--json"]).code(0).json(), v);
}

#[test]
fn fact_without_state_is_valid_json_with_the_reason() {
    let w = World::new("enabled: true\n");
    let v = w.run(&["facts"]).code(0).json();
    let f = &v["mw_experimental"];
    assert_eq!(f["enabled"], true);
    assert_eq!(f["state"], "unknown");
    assert_eq!(f["converged"], false);
    assert!(
        f["reason"].as_str().unwrap().contains("no state file"),
        "{f}"
    );
}

#[test]
fn fact_with_a_corrupt_state_file_is_valid_json_with_the_reason() {
    let w = World::new("enabled: true\n");
    std::fs::create_dir_all(&w.state_dir).unwrap();
    for garbage in ["{\"version\": \"0.1", "\0\0\0", "[]"] {
        std::fs::write(w.state_dir.join("state.json"), garbage).unwrap();
        let v = w.run(&["facts"]).code(0).json();
        let f = &v["mw_experimental"];
        assert_eq!(f["state"], "unknown", "{garbage:?}: {f}");
        assert!(f["reason"].as_str().unwrap().contains("state.json"), "{f}");
        // And through the name Facter uses.
        let dir = w.path().join(format!("fd{}", garbage.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(bin(), dir.join("mw_experimental")).unwrap();
        let out = Out::of(
            Command::new(dir.join("mw_experimental"))
                .env("MW_EXPERIMENTAL_CONFIG", &w.config)
                .output()
                .unwrap(),
        );
        assert_eq!(out.code(0).json()["mw_experimental"]["state"], "unknown");
    }
}

#[test]
fn fact_with_an_invalid_config_still_answers_valid_json() {
    let w = World::new("enabled: yes please\n");
    let v = w.run(&["facts"]).code(0).json();
    assert_eq!(v["mw_experimental"]["state"], "unknown");
    assert!(v["mw_experimental"]["reason"]
        .as_str()
        .unwrap()
        .contains("enabled"));
}

#[test]
fn unknown_component_is_an_error() {
    let w = World::new("");
    w.run(&["plan", "groups"])
        .code(2)
        .stderr_has("unknown component \"groups\"");
}

/// A kubectl that never answers: the node component holds the lock until its own deadline.
fn slow_kubectl(w: &World) -> std::path::PathBuf {
    let p = w.path().join("slow-kubectl");
    std::fs::write(&p, "#!/bin/sh\nsleep 60\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_second_apply_fails_with_the_holders_pid_when_the_lock_is_held() {
    let w = World::new("");
    let kubectl = slow_kubectl(&w);
    w.write_config(&format!(
        "enabled: true\nnode_name: {}\nkubernetes: {{ kubectl: {}, timeout_seconds: 3 }}\n",
        unique("lock"),
        kubectl.display()
    ));
    let mut first = w.cmd().args(["apply", "node"]).spawn().unwrap();
    let lock = w.state_dir.join("lock");
    let t = Instant::now();
    while !std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .contains(&format!("pid {}", first.id()))
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the first apply never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = w.run(&["apply", "node", "--lock-wait", "1"]);
    second
        .code(2)
        .stderr_has(&format!("another run (pid {}", first.id()))
        .stderr_has("lock");
    // Waiting long enough, the second run gets the lock once the first one is done.
    let third = w.run(&["apply", "node", "--lock-wait", "20"]);
    assert!(!third.stderr.contains("holds the lock"), "{}", third.stderr);
    third
        .stderr_has("waiting for another run")
        .stderr_has("kubectl did not finish");
    assert_eq!(
        first.wait().unwrap().code(),
        Some(2),
        "the first apply's kubectl timed out"
    );
}
