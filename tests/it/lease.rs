//! containerd's garbage collector against a running sync: the sync reads under a lease that
//! holds every blob of its image, so untagging the image and collecting garbage while the sync
//! runs cannot take a layer from under it; the lease goes when the sync ends, and with it
//! what only the lease kept.

use crate::support::containerd::Containerd;
use crate::support::oci::{put, Layout};
use crate::support::*;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

const REPO: &str = "docker-registry.discovery.wmnet/restricted/mediawiki-multiversion";

fn our_leases(ctrd: &Containerd) -> Vec<String> {
    ctrd.ctr(&["leases", "ls", "-q"])
        .lines()
        .filter(|l| l.starts_with("mw-experimental-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_image_untagged_and_collected_during_a_sync_is_held_by_the_lease() {
    let ctrd = Containerd::start();
    let w = World::new("");
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: containerd, containerd_address: {} }}\n",
        ctrd.socket.display()
    ));
    // A layer large enough that reading it takes a while: 48 MiB that do not compress.
    let mut big = vec![0u8; 48 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut big)
        .unwrap();
    let layout = Layout::new(w.path());
    let tag = "2026-11-30-101010-publish";
    layout.image(tag, None, |root| {
        put(root, "srv/mediawiki/index.php", "<?php echo 'leased';\n");
        std::fs::write(root.join("srv/mediawiki/big.bin"), &big).unwrap();
    });
    ctrd.import(&layout.dir, REPO);
    let blobs_before = ctrd.ctr(&["content", "ls", "-q"]);
    assert!(blobs_before.lines().count() >= 3, "{blobs_before}");

    let mut child = w
        .cmd()
        .arg("sync")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // As soon as the sync holds its lease: stop it, untag the image, collect garbage.
    let t = Instant::now();
    while our_leases(&ctrd).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sync ended before a lease was seen"
        );
        assert!(t.elapsed() < Duration::from_secs(30), "no lease seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The lease is made at the first read (the index); the layers join it right after the
    // manifest is read, milliseconds later, long before the 48 MiB layer is read through.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the sync ended too soon"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    ctrd.ctr(&["images", "rm", "--sync", &format!("{REPO}:{tag}")]);
    assert!(!ctrd.images().contains(tag), "{}", ctrd.images());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let out = Out::of(child.wait_with_output().unwrap());

    // The lease held every blob: the sync completes and the tree is the image.
    out.code(0);
    assert_eq!(
        std::fs::read(w.code.join("big.bin")).unwrap(),
        big,
        "big.bin differs from the image"
    );
    assert_eq!(
        std::fs::read_to_string(w.code.join("index.php")).unwrap(),
        "<?php echo 'leased';\n"
    );
    // The lease is released at the end, and what only it kept is collected next time.
    assert!(our_leases(&ctrd).is_empty(), "{:?}", our_leases(&ctrd));
    // Deleting an image of something else makes containerd collect garbage at once: nothing
    // of the synced image is left (no image and no lease refer to it).
    let other = Layout::new(&w.path().join(unique("o")));
    other.image("x", None, |r| put(r, "srv/y", "y"));
    ctrd.import(&other.dir, "example.org/gc-nudge");
    ctrd.ctr(&["images", "rm", "--sync", "example.org/gc-nudge:x"]);
    let left = ctrd.ctr(&["content", "ls", "-q"]);
    assert!(
        left.trim().is_empty(),
        "blobs left after the lease went: {left}"
    );
}
