//! Which image `sync` takes: production's tags (with and without a flavour suffix) ordered by
//! their date-time; with WMF's release values file, exactly the image it names, even an older
//! one; pulled from a real registry (Debian's docker-registry, images pushed with skopeo) through
//! the real containerd when the node lacks it; and with the registry down or hanging, a clear
//! error in bounded time and the tree unchanged.

use crate::support::containerd::Containerd;
use crate::support::oci::{put, Layout};
use crate::support::web::Registry;
use crate::support::*;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAME: &str = "restricted/mediawiki-multiversion";

/// Every file of the tree with its content.
fn files(root: &Path) -> BTreeMap<PathBuf, String> {
    fn rec(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rec(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        rec(root, root, &mut out);
    }
    out
}

/// An image whose tree says which tag it is.
fn image(layout: &Layout, tag: &str) {
    layout.image(tag, None, |root| {
        put(
            root,
            "srv/mediawiki/index.php",
            &format!("<?php echo '{tag}';\n"),
        );
    });
}

fn index(w: &World) -> String {
    std::fs::read_to_string(w.code.join("index.php")).unwrap_or_default()
}

fn world(ctrd: &Containerd, repo: &str, extra: &str) -> World {
    World::new(&format!(
        "enabled: true\nimage:\n  containerd_address: {}\n  repository: {repo}\n{extra}",
        ctrd.socket.display()
    ))
}

fn release_file(p: &Path, registry: &str, tag: &str) {
    // What scap writes (yaml.dump of _HelmfileReleaseValues.to_values()).
    std::fs::write(
        p,
        format!(
            "docker:\n  registry: {registry}\nmain_app:\n  image: {NAME}:{tag}\nmw:\n  httpd:\n    image_tag: restricted/mediawiki-webserver:{tag}\n"
        ),
    )
    .unwrap();
}

#[test]
fn production_tags_order_by_date_time_and_a_suffix_never_wins() {
    let ctrd = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path());
    // Pushed in an odd order; the suffix -99 and the longer suffix must not win.
    for tag in [
        "2024-08-08-135932-publish-81",
        "2024-08-08-135932-publish",
        "2024-08-07-235959-publish-99",
        "2024-08-08-135932-publish-experimental",
    ] {
        image(&layout, tag);
    }
    let repo = format!("docker-registry.discovery.wmnet/{NAME}");
    ctrd.import(&layout.dir, &repo);
    let w = world(&ctrd, &repo, "");
    w.run(&["sync"]).code(0);
    assert_eq!(index(&w), "<?php echo '2024-08-08-135932-publish';\n");
    let fact = w.run(&["status", "--json"]).json();
    assert_eq!(
        fact["mw_experimental"]["code"]["tag"], "2024-08-08-135932-publish",
        "{fact}"
    );
    assert!(fact["mw_experimental"]["code"]["release_file"].is_null());
}

#[test]
fn release_file_is_followed_pulled_when_missing_and_a_dead_registry_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // A registry that wants a login, over TLS; containerd's CRI plugin holds the login and the
    // CA, as a node's does; the tool's configuration names neither.
    let reg = Registry::start_secure(&tmp.path().join("registry"));
    let ctrd = Containerd::start_cri(&reg);
    let (_, _, ca) = reg.login.clone().unwrap();
    let anonymous = sh(std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg(format!("https://{}/v2/", reg.host())));
    assert_eq!(
        anonymous, "401",
        "the registry must refuse anonymous clients"
    );
    let layout = Layout::new(tmp.path());
    let (old, new, pulled) = (
        "2024-08-08-135932-publish",
        "2024-08-09-101010-publish",
        "2024-08-10-000000-publish-81",
    );
    for tag in [old, new, pulled] {
        image(&layout, tag);
    }
    let repo = format!("{}/{NAME}", reg.host());
    // The node has old and new; only the registry has `pulled`.
    ctrd.import(&layout.dir, &repo);
    sh(std::process::Command::new("ctr")
        .arg("--address")
        .arg(&ctrd.socket)
        .args(["--namespace", "k8s.io", "images", "rm"])
        .arg(format!("{repo}:{pulled}")));
    reg.push(&layout.dir, pulled, &format!("{NAME}:{pulled}"));

    let rel = tmp.path().join("mw-experimental-pinkllama-eqiad.yaml");
    release_file(&rel, &reg.host(), old);
    let w = world(
        &ctrd,
        &repo,
        &format!(
            "  release_file: {}\n  pull_timeout_seconds: 3\n",
            rel.display()
        ),
    );

    // An older tag than the newest present: the release file's is taken.
    w.run(&["sync"]).code(0);
    assert_eq!(index(&w), format!("<?php echo '{old}';\n"));
    let out = w.run(&["status"]);
    out.code(0);
    assert!(
        out.stdout
            .contains(&format!("follows {}: tag {old}", rel.display())),
        "{}",
        out.stdout
    );
    let fact = w.run(&["facts"]).json();
    assert_eq!(fact["mw_experimental"]["code"]["tag"], old);
    assert_eq!(
        fact["mw_experimental"]["code"]["release_file"],
        rel.display().to_string()
    );

    // Named but not on the node: plan says so (exit 1) and pulls nothing; sync pulls, then syncs.
    release_file(&rel, &reg.host(), pulled);
    let plan = w.run(&["plan", "code"]);
    plan.code(1);
    assert!(!ctrd.images().contains(pulled), "plan pulled");
    // The pull goes through containerd's CRI image service (its log says so), and the sync
    // starts no process at all: no `ctr`, no shell (strace follows every fork).
    let trace = tmp.path().join("execve.trace");
    let out = Out::of(
        std::process::Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=execve", "-o"])
            .arg(&trace)
            .arg(crate::support::bin())
            .arg("--config")
            .arg(&w.config)
            .arg("sync")
            .output()
            .unwrap(),
    );
    out.code(0);
    assert_eq!(index(&w), format!("<?php echo '{pulled}';\n"));
    assert!(ctrd.images().contains(&format!("{repo}:{pulled}")));
    let execs: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("execve(") && !l.contains("ENOENT"))
        .map(str::to_string)
        .collect();
    assert_eq!(execs.len(), 1, "sync ran other programs: {execs:#?}");
    let log = std::fs::read_to_string(ctrd.dir.path().join("containerd.log")).unwrap();
    assert!(
        log.contains(&format!("PullImage \\\"{repo}:{pulled}\\\"")),
        "containerd's log does not show the CRI pull: {log}"
    );
    assert!(!std::fs::read_to_string(&w.config)
        .unwrap()
        .contains("password"));

    // Pulling off: a clear error, nothing changed.
    let before = files(&w.code);
    release_file(&rel, &reg.host(), "2024-08-11-000000-publish");
    let cfg = |repo: &str, extra: &str| {
        format!(
            "enabled: true\nimage:\n  containerd_address: {}\n  repository: {repo}\n  release_file: {}\n{extra}",
            ctrd.socket.display(),
            rel.display()
        )
    };
    w.write_config(&cfg(&repo, "  pull: false\n"));
    w.run(&["sync"])
        .code(2)
        .stderr_has("is not on this node")
        .stderr_has("image.pull is false");
    assert_eq!(files(&w.code), before);
    w.write_config(&cfg(&repo, "  pull_timeout_seconds: 3\n"));

    // The registry down: a clear error at once, nothing changed.
    drop(reg);
    let t = Instant::now();
    w.run(&["sync"])
        .code(2)
        .stderr_has("pulling ")
        .stderr_has("2024-08-11-000000-publish")
        .stderr_has("check that the registry");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(files(&w.code), before);

    // A registry that accepts and never answers: killed at image.pull_timeout_seconds (3 s).
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = hang.local_addr().unwrap().to_string();
    std::fs::write(
        &rel,
        format!(
            "docker:\n  registry: {host}\nmain_app:\n  image: {NAME}:2024-08-11-000000-publish\n"
        ),
    )
    .unwrap();
    w.write_config(&cfg(
        &format!("{host}/{NAME}"),
        "  pull_timeout_seconds: 3\n",
    ));
    let t = Instant::now();
    w.run(&["sync"])
        .code(2)
        .stderr_has("no answer within 3s (image.pull_timeout_seconds)");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(files(&w.code), before);
    drop(hang);
}
