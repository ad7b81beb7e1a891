//! `watch`: containerd's image events of the repository touch the trigger file that
//! `mw-experimental-sync.path` watches; other repositories' images do not; a containerd that
//! goes away and comes back is followed again, with one touch for what may have been missed.

use crate::support::containerd::Containerd;
use crate::support::oci::{put, Layout};
use crate::support::*;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = "docker-registry.discovery.wmnet/restricted/mediawiki-multiversion";

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The file's text (empty when missing). The trigger is created, then written: a test waits for
/// its whole line (ending in a newline), not for the file to exist.
fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_new_image_of_the_repository_touches_the_trigger_and_others_do_not() {
    let ctrd = Containerd::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path());
    for tag in ["2024-09-01-000000-publish", "2024-09-02-000000-publish"] {
        layout.image(tag, None, |root| {
            put(
                root,
                "srv/mediawiki/index.php",
                &format!("<?php echo '{tag}';\n"),
            )
        });
    }
    let other = Layout::new(&tmp.path().join("other"));
    other.image("1.0", None, |root| put(root, "srv/x", "x"));
    let w = World::new(&format!(
        "enabled: true\nimage:\n  containerd_address: {}\n  repository: {REPO}\n",
        ctrd.socket.display()
    ));
    let trigger = tmp.path().join("image-event");
    let log = tmp.path().join("watch.log");
    let child = w
        .cmd()
        .arg("watch")
        .arg("--trigger")
        .arg(&trigger)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _watcher = Watcher(child);
    wait_for(
        "the watcher to follow events",
        Duration::from_secs(10),
        || read(&log).contains("following image events"),
    );
    // The repository's images (what a pull or an import creates): the trigger names one.
    // containerd does not say when a subscription is in place, so the import is repeated
    // (an update event then) until the first touch, within a bound.
    let t = Instant::now();
    while !read(&trigger).ends_with('\n') {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no trigger: {}",
            read(&log)
        );
        ctrd.import(&layout.dir, REPO);
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = t.elapsed();
    assert!(
        read(&trigger).contains(&format!(" {REPO}:2024-09-0")),
        "{}",
        read(&trigger)
    );
    assert!(read(&log).contains("a sync is due"), "{}", read(&log));

    // Another repository's image, with the subscription in place: no trigger for it (a late
    // event of the repeated imports above may still touch the file, naming the repository).
    std::fs::remove_file(&trigger).unwrap();
    ctrd.import(&other.dir, "docker-registry.discovery.wmnet/other");
    std::thread::sleep(Duration::from_millis(700));
    assert!(!read(&trigger).contains("/other"), "{}", read(&trigger));
    assert!(!read(&log).contains("/other"), "{}", read(&log));
    eprintln!("import to trigger: {took:?}");
}

#[test]
fn watch_refuses_a_source_without_events() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(&format!(
        "enabled: true\nimage:\n  source: oci-layout\n  location: {}\n",
        tmp.path().display()
    ));
    let trigger = tmp.path().join("image-event");
    let out = Out::of(
        w.cmd()
            .arg("watch")
            .arg("--trigger")
            .arg(&trigger)
            .output()
            .unwrap(),
    );
    out.code(2).stderr_has("image.source is OciLayout");
    assert!(!trigger.exists());
}

#[test]
fn a_containerd_restart_is_followed_again_with_one_touch() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("containerd.sock");
    let ctrd = Containerd::start_at(&sock);
    let w = World::new(&format!(
        "enabled: true\nimage:\n  containerd_address: {}\n  repository: {REPO}\n",
        sock.display()
    ));
    let trigger = tmp.path().join("image-event");
    let log = tmp.path().join("watch.log");
    let mut child = w
        .cmd()
        .args(["watch", "--max-triggers", "1", "--trigger"])
        .arg(&trigger)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "the watcher to follow events",
        Duration::from_secs(10),
        || read(&log).contains("following image events"),
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(ctrd);
    let _ = std::fs::remove_file(&sock);
    // The socket is gone: the watcher retries, and touches nothing while containerd is away.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!trigger.exists(), "{}", read(&log));
    let ctrd2 = Containerd::start_at(&sock);
    let t = Instant::now();
    while !read(&trigger).ends_with('\n') {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no trigger after the restart: {}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        read(&trigger).contains("opened again"),
        "{}",
        read(&trigger)
    );
    // --max-triggers 1: it ends by itself, exit 0.
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "watch did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{}", read(&log));
    drop(ctrd2);
}
