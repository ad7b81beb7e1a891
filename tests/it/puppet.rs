//! Acceptance (issue 6): the Debian package built and installed, then the real `puppet apply` of
//! `profile::mw_experimental` over the repository's `hiera/` plus one test layer, against the
//! test API server (real kubectl) and a real containerd on a private socket. One test, run in
//! sequence, because enabling the timer and installing the package are machine-wide.

use crate::support::containerd::Containerd;
use crate::support::kube_api::{node, ApiServer, Fault};
use crate::support::perm::{getfacl, getfacl_tree, GroupGuard, UserGuard};
use crate::support::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const TIMER: &str = "mw-experimental-sync.timer";
const REPO: &str = "docker-registry.example/restricted/mediawiki-multiversion";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The package: `MWX_DEB` (tests/run builds it once), else built here with packaging/build-deb.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("MWX_DEB") {
        return PathBuf::from(deb);
    }
    let out = sh(&mut Command::new(repo_root().join("packaging/build-deb")));
    PathBuf::from(
        out.trim()
            .lines()
            .last()
            .expect("build-deb printed the .deb's path"),
    )
}

/// Removes the package and disables the timer however the test ends.
struct Installed;
impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("systemctl").args(["disable", TIMER]).output();
        let _ = Command::new("dpkg")
            .args(["--purge", "mw-experimental"])
            .output();
    }
}

/// One `puppet apply` through tests/puppet-apply: (detailed exit code, stdout + stderr).
fn puppet(layer: &Path) -> (i32, String) {
    let out = Command::new(repo_root().join("tests/puppet-apply"))
        .arg(layer)
        .env(
            "KUBECACHEDIR",
            layer.parent().unwrap().join("kubectl-cache"),
        )
        .output()
        .expect("tests/puppet-apply");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn timer_state() -> String {
    let o = Command::new("systemctl")
        .args(["is-enabled", TIMER])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Every path's type, mode, owner, group, size, mtime and content, plus `getfacl` of each:
/// what "byte-for-byte and ACL-for-ACL unchanged" means.
fn snapshot(root: &Path) -> (BTreeMap<PathBuf, String>, BTreeMap<PathBuf, Vec<String>>) {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.file_type().is_file() {
            format!("{:?}", std::fs::read(&p).unwrap())
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        files.insert(
            p.clone(),
            format!(
                "{:o} {}:{} {} {} {content}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime()
            ),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    (files, getfacl_tree(root))
}

/// An image of `REPO:tag` with a small MediaWiki tree, built offline with umoci.
fn build_image(dir: &Path, tag: &str) -> PathBuf {
    let layout = dir.join("layout");
    sh(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    sh(Command::new("umoci")
        .arg("new")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display())));
    let bundle = dir.join("bundle");
    sh(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle));
    let tree = bundle.join("rootfs/srv/mediawiki");
    std::fs::create_dir_all(tree.join("php-1.46/includes")).unwrap();
    std::fs::write(tree.join("index.php"), "<?php // index\n").unwrap();
    std::fs::write(tree.join("php-1.46/includes/Setup.php"), "<?php // setup\n").unwrap();
    sh(Command::new("umoci")
        .arg("repack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle));
    layout
}

#[test]
fn puppet_converges_on_then_off_then_on_and_recovers_from_a_failing_api_server() {
    for tool in [
        "puppet",
        "facter",
        "dpkg-deb",
        "systemctl",
        "umoci",
        "containerd",
    ] {
        assert!(have(tool), "{tool} is missing: run tests/install-deps");
    }
    let deb = package();
    sh(Command::new("dpkg").arg("-i").arg(&deb));
    let _installed = Installed;
    let binary = Path::new("/usr/bin/mw-experimental");
    assert!(
        binary.is_file(),
        "the package did not install {}",
        binary.display()
    );
    // The login banner's fragment: executable, and a conffile (an administrator's edit stays).
    let motd = Path::new("/etc/update-motd.d/50-mw-experimental");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(motd).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755, "{}", motd.display());
    let conffiles =
        sh(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "mw-experimental"]));
    assert!(
        conffiles.contains("/etc/update-motd.d/50-mw-experimental"),
        "{conffiles}"
    );

    let t = tempfile::Builder::new()
        .prefix("mwx-puppet-")
        .tempdir()
        .unwrap();
    let group = GroupGuard::reserve();
    let owner = UserGuard::create();
    let name = unique("wikikube-worker-exp");
    let api = ApiServer::start(vec![node(
        &name,
        &[("topology.kubernetes.io/zone", "row-a")],
        &[
            ("dedicated", "other", "PreferNoSchedule"),
            ("maintenance", "", "NoExecute"),
        ],
    )]);
    let ctrd = Containerd::start();
    let layout = build_image(t.path(), "2026-11-20-101010-publish-1");
    ctrd.import(&layout, REPO);

    let code = t.path().join("srv/mediawiki");
    let config_dir = t.path().join("etc");
    let config = config_dir.join("config.yaml");
    let facts_dir = t.path().join("facts.d");
    let layer = t.path().join("layer.yaml");
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let write_layer = |enabled: bool| {
        let text = format!(
            "---\n\
             profile::mw_experimental::enabled: {enabled}\n\
             profile::mw_experimental::manage_package: false\n\
             profile::mw_experimental::start_timer: false\n\
             profile::mw_experimental::node_name: {name}\n\
             profile::mw_experimental::code_path: {code}\n\
             profile::mw_experimental::code_owner: {owner}\n\
             profile::mw_experimental::deployers_group: {group}\n\
             profile::mw_experimental::deployers_gid: {gid}\n\
             profile::mw_experimental::state_dir: {dir}/state\n\
             profile::mw_experimental::metrics_file: {dir}/metrics/mw_experimental.prom\n\
             profile::mw_experimental::config_dir: {config_dir}\n\
             profile::mw_experimental::facts_dir: {facts_dir}\n\
             profile::mw_experimental::kubectl: /usr/bin/kubectl\n\
             profile::mw_experimental::kubernetes_timeout: 3\n\
             profile::mw_experimental::kubeconfig: {kubeconfig:?}\n\
             profile::mw_experimental::image_source: containerd\n\
             profile::mw_experimental::image_containerd_address: {socket}\n\
             profile::mw_experimental::image_repository: {REPO}\n",
            code = code.display(),
            owner = owner.name,
            group = group.name,
            gid = group.gid,
            dir = t.path().display(),
            config_dir = config_dir.display(),
            facts_dir = facts_dir.display(),
            socket = ctrd.socket.display(),
        );
        std::fs::write(&layer, text).unwrap();
    };
    let fact = || -> serde_json::Value {
        let out = sh(Command::new("facter")
            .arg("--json")
            .arg("--external-dir")
            .arg(&facts_dir)
            .arg("mw_experimental")
            .env("MW_EXPERIMENTAL_CONFIG", &config));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["mw_experimental"].clone()
    };
    let managed_labels = |api: &ApiServer| api.labels(&name).get("dedicated").cloned();
    let managed_taints = |api: &ApiServer| {
        api.taints(&name)
            .into_iter()
            .filter(|t| t.starts_with("dedicated=mw-experimental:"))
            .count()
    };
    let foreign_kept = |api: &ApiServer| {
        let taints = api.taints(&name);
        api.labels(&name)
            .get("topology.kubernetes.io/zone")
            .map(String::as_str)
            == Some("row-a")
            && taints
                .iter()
                .any(|t| t == "dedicated=other:PreferNoSchedule")
            && taints.iter().any(|t| t.starts_with("maintenance"))
    };

    // Switch on: the first run converges everything, the second changes nothing.
    write_layer(true);
    let (rc, out) = puppet(&layer);
    assert_eq!(rc, 2, "first run on: changes, no failure\n{out}");
    assert!(
        !out.contains(&api.token().to_string()),
        "the kubeconfig's token reached Puppet's output"
    );
    let g = sh(Command::new("getent").args(["group", &group.name]));
    assert!(
        g.starts_with(&format!("{}:x:{}:", group.name, group.gid)),
        "{g}"
    );
    let acl = getfacl(&code);
    assert!(acl.contains(&format!("group:{}:rwx", group.name)), "{acl}");
    assert!(
        acl.contains(&format!("default:group:{}:rwx", group.name)),
        "{acl}"
    );
    assert_eq!(managed_labels(&api).as_deref(), Some("mw-experimental"));
    assert_eq!(managed_taints(&api), 2);
    assert!(
        foreign_kept(&api),
        "foreign labels or taints lost: {:?}",
        api.node(&name)
    );
    assert_eq!(timer_state(), "enabled");
    let (rc, out) = puppet(&layer);
    assert_eq!(rc, 0, "second run on: nothing to change\n{out}");
    let f = fact();
    assert_eq!(f["enabled"], true, "{f}");
    assert_eq!(f["converged"], true, "{f}");

    // What the timer does on a node: sync from the image; then an engineer edits a file.
    let o = Out::of(
        Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("sync")
            .output()
            .unwrap(),
    );
    o.code(0);
    assert_eq!(
        std::fs::read_to_string(code.join("index.php")).unwrap(),
        "<?php // index\n"
    );
    std::fs::write(code.join("index.php"), "<?php // an engineer's edit\n").unwrap();
    std::fs::write(code.join("scratch.php"), "<?php // new\n").unwrap();
    let (rc, out) = puppet(&layer);
    assert_eq!(
        rc, 0,
        "a run after sync and edits: nothing to change\n{out}"
    );

    // Switch off: managed labels and taints gone, foreign ones kept, timer off, tree untouched.
    let before = snapshot(&code);
    write_layer(false);
    let (rc, out) = puppet(&layer);
    assert_eq!(rc, 2, "first run off: changes, no failure\n{out}");
    assert_eq!(managed_labels(&api), None);
    assert_eq!(managed_taints(&api), 0);
    assert!(
        foreign_kept(&api),
        "foreign labels or taints lost: {:?}",
        api.node(&name)
    );
    assert_eq!(timer_state(), "disabled");
    let (rc, out) = puppet(&layer);
    assert_eq!(rc, 0, "second run off: nothing to change\n{out}");
    let after = snapshot(&code);
    assert_eq!(before.0, after.0, "switching off changed the code tree");
    assert_eq!(
        before.1, after.1,
        "switching off changed an ACL in the code tree"
    );
    let f = fact();
    assert_eq!(f["enabled"], false, "{f}");
    assert_eq!(f["converged"], true, "{f}");
    assert!(
        getent_group(&group.name),
        "switching off must keep the group"
    );

    // On again converges, and the engineer's edit is still there.
    write_layer(true);
    let (rc, out) = puppet(&layer);
    assert_eq!(rc, 2, "on again: changes\n{out}");
    assert_eq!(puppet(&layer).0, 0);
    assert_eq!(managed_taints(&api), 2);
    assert_eq!(
        std::fs::read_to_string(code.join("index.php")).unwrap(),
        "<?php // an engineer's edit\n"
    );

    // A failing API server fails the run with the tool's message; the next run recovers.
    let mut n = api.node(&name);
    n["spec"]["taints"] = serde_json::json!([]);
    api.put_node(n);
    api.set_fault(Fault::NodeStatus(500));
    let (rc, out) = puppet(&layer);
    assert!(
        rc == 4 || rc == 6,
        "a failing API server must fail the run (got {rc})\n{out}"
    );
    assert!(
        out.contains("Mw_experimental_component[node]")
            && out.contains("mw-experimental apply node failed: node: "),
        "the tool's message is not in Puppet's output, on the node component\n{out}"
    );
    assert!(
        out.contains(&name),
        "the message does not name the node\n{out}"
    );
    let f = fact();
    assert_eq!(f["converged"], false, "{f}");
    assert!(
        f["node"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&name)),
        "{f}"
    );
    api.set_fault(Fault::None);
    let (rc, out) = puppet(&layer);
    assert_eq!(
        rc, 2,
        "the run after the API server recovered converges\n{out}"
    );
    assert_eq!(managed_taints(&api), 2);
    let (rc, out) = puppet(&layer);
    assert_eq!(rc, 0, "the run after that changes nothing\n{out}");
    assert_eq!(fact()["converged"], true);
}

fn getent_group(name: &str) -> bool {
    Command::new("getent")
        .args(["group", name])
        .output()
        .unwrap()
        .status
        .success()
}
