//! The foundation: configuration errors, the fact (through the real Facter), the state file,
//! the lock. The binary runs under `assert_cmd` (exit code and output asserted with
//! `predicates`), in the worlds `support` builds.

use crate::support::*;
use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// `mw-experimental --config <world's config>`, under assert_cmd.
fn mwx(w: &World) -> Command {
    Command::from_std(w.cmd())
}

/// What a successful run printed on stdout, as JSON.
#[track_caller]
fn json_of(assert: assert_cmd::assert::Assert) -> serde_json::Value {
    let out = &assert.get_output().stdout;
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(out)
        )
    })
}

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
    let out = cmd.assert().success();
    String::from_utf8_lossy(&out.get_output().stdout)
        .trim()
        .to_string()
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
        ("unknown image.read", "image: { read: mounts }\n", "read"),
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
            // assert_cmd's failure shows the command and its output; this line, the case.
            eprintln!("case: {what}: `{}`", args.join(" "));
            mwx(&w)
                .args(args)
                .assert()
                .code(2)
                .stderr(contains(*key).and(contains(w.config.display().to_string())))
                .stdout(predicate::str::is_empty());
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
    mwx(&w)
        .arg("plan")
        .assert()
        .code(2)
        .stderr(contains("line 6 column").and(contains(w.config.display().to_string())));
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
    mwx(&w)
        .arg("apply")
        .assert()
        .code(2)
        .stderr(contains("state_dir"));
    assert!(!w.code.exists());
}

#[test]
fn a_missing_explicit_config_file_is_an_error() {
    Command::new(bin())
        .args(["--config", "/nonexistent/mwx.yaml", "plan"])
        .assert()
        .code(2)
        .stderr(contains("/nonexistent/mwx.yaml"))
        .stdout(predicate::str::is_empty());
}

#[test]
fn config_prints_the_effective_configuration_with_defaults() {
    let w = World::new("enabled: true\ndeployers: { members: [alice] }\n");
    let v = json_of(mwx(&w).args(["config", "--json"]).assert().success());
    assert_eq!(v["enabled"], true);
    assert_eq!(v["deployers"]["members"][0], "alice");
    assert_eq!(
        v["deployers"]["gid"], 705,
        "defaults fill what the file leaves out"
    );
    assert_eq!(v["kubernetes"]["taints"].as_array().unwrap().len(), 2);
    let yaml = mwx(&w)
        .arg("config")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    // The YAML it prints is itself a valid configuration that means the same.
    std::fs::write(&w.config, &yaml).unwrap();
    assert_eq!(
        json_of(mwx(&w).args(["config", "--json"]).assert().success()),
        v
    );
}

#[test]
fn fact_without_state_is_valid_json_with_the_reason() {
    let w = World::new("enabled: true\n");
    let v = json_of(mwx(&w).arg("facts").assert().success());
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
        let v = json_of(mwx(&w).arg("facts").assert().success());
        let f = &v["mw_experimental"];
        assert_eq!(f["state"], "unknown", "{garbage:?}: {f}");
        assert!(f["reason"].as_str().unwrap().contains("state.json"), "{f}");
        // And through the name Facter uses.
        let dir = w.path().join(format!("fd{}", garbage.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(bin(), dir.join("mw_experimental")).unwrap();
        let v = json_of(
            Command::new(dir.join("mw_experimental"))
                .env("MW_EXPERIMENTAL_CONFIG", &w.config)
                .assert()
                .success(),
        );
        assert_eq!(v["mw_experimental"]["state"], "unknown");
    }
}

#[test]
fn fact_with_an_invalid_config_still_answers_valid_json() {
    let w = World::new("enabled: yes please\n");
    let v = json_of(mwx(&w).arg("facts").assert().success());
    assert_eq!(v["mw_experimental"]["state"], "unknown");
    assert!(v["mw_experimental"]["reason"]
        .as_str()
        .unwrap()
        .contains("enabled"));
}

#[test]
fn unknown_component_is_an_error() {
    let w = World::new("");
    mwx(&w)
        .args(["plan", "groups"])
        .assert()
        .code(2)
        .stderr(contains("unknown component \"groups\""));
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
    mwx(&w)
        .args(["apply", "node", "--lock-wait", "1"])
        .assert()
        .code(2)
        .stderr(contains(format!("another run (pid {}", first.id())).and(contains("lock")));
    // Waiting long enough, the second run gets the lock once the first one is done.
    mwx(&w)
        .args(["apply", "node", "--lock-wait", "20"])
        .assert()
        .stderr(
            contains("waiting for another run")
                .and(contains("kubectl did not finish"))
                .and(contains("holds the lock").not()),
        );
    assert_eq!(
        first.wait().unwrap().code(),
        Some(2),
        "the first apply's kubectl timed out"
    );
}
