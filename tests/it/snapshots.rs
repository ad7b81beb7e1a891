//! The containerd source's read paths against a real containerd that unpacked the image itself
//! (`ctr images import` unpacks as the kubelet's pull does): the layer blobs, the snapshots
//! (overlayfs and native snapshotters), and a plain directory copy of the same root give the
//! same synced tree (contents, modes, symlinks, a whiteout of an upper layer, a directory
//! replaced whole); an image whose snapshots were removed through containerd still syncs with
//! `image.read: auto` and fails clearly with `snapshots`.

use crate::support::containerd::Containerd;
use crate::support::oci::{put, Layout};
use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const REPO: &str = "docker-registry.discovery.wmnet/restricted/mediawiki-multiversion";
const V1: &str = "2026-11-30-101010-publish-1";
const V2: &str = "2026-11-30-101010-publish-2";
const V3: &str = "2026-11-30-101010-publish-3";

/// Three layers: the second removes a file and a directory (whiteouts), changes a mode and a
/// symlink; the third (a tar of our own: umoci writes no opaque markers) makes a directory
/// opaque, hiding what the lower layers had in it.
fn layout(parent: &Path) -> Layout {
    let l = Layout::new(parent);
    l.image(V1, None, |r| {
        let t = r.join("srv/mediawiki");
        put(&t, "index.php", "<?php // v1\n");
        put(&t, "gone.php", "removed in v2\n");
        put(&t, "old/a.php", "a\n");
        put(&t, "old/b.php", "b\n");
        put(&t, "replaced/one.php", "one\n");
        put(&t, "replaced/sub/two.php", "two\n");
        put(&t, "bin/run", "#!/bin/sh\necho run\n");
        std::fs::set_permissions(t.join("bin/run"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("index.php", t.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.join("out")).unwrap();
        put(r, "etc/outside", "not in the tree\n");
    });
    l.image(V2, Some(V1), |r| {
        let t = r.join("srv/mediawiki");
        std::fs::remove_file(t.join("gone.php")).unwrap();
        std::fs::remove_dir_all(t.join("old")).unwrap();
        std::fs::remove_dir_all(t.join("replaced")).unwrap();
        put(&t, "replaced/three.php", "three\n");
        put(&t, "index.php", "<?php // v2\n");
        std::fs::set_permissions(t.join("bin"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::remove_file(t.join("link")).unwrap();
        std::os::unix::fs::symlink("bin/run", t.join("link")).unwrap();
    });
    let mut b = tar::Builder::new(Vec::new());
    let mut entry = |name: &str, dir: bool, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_mtime(1_764_000_000);
        h.set_size(data.len() as u64);
        h.set_path(name).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    entry("srv/mediawiki/replaced/", true, b"");
    entry("srv/mediawiki/replaced/.wh..wh..opq", false, b"");
    entry("srv/mediawiki/replaced/four.php", false, b"four\n");
    let layer = parent.join(unique("opq.tar"));
    std::fs::write(&layer, b.into_inner().unwrap()).unwrap();
    sh(Command::new("umoci")
        .args(["tag", "--image"])
        .arg(format!("{}:{V2}", l.dir.display()))
        .arg(V3));
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image"])
        .arg(format!("{}:{V3}", l.dir.display()))
        .arg(&layer));
    l
}

/// A world syncing from containerd with `image.read: read`.
fn world(ctrd: &Containerd, read: &str) -> World {
    let w = World::new("");
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: containerd, containerd_address: {}, read: {read}, layer_cache_bytes: 0 }}\n",
        ctrd.socket.display()
    ));
    w
}

/// Every entry below `root`: path, type, mode, size, symlink target (`find -printf`).
fn listing(root: &Path) -> String {
    if !root.exists() {
        return String::new();
    }
    let out =
        sh(Command::new("find")
            .arg(root)
            .args(["-mindepth", "1", "-printf", "%P %y %m %s %l\n"]));
    let mut v: Vec<&str> = out.lines().collect();
    v.sort_unstable();
    v.join("\n")
}

/// The two trees are the same: `diff -r --no-dereference` and the listing (modes included).
fn same_tree(a: &Path, b: &Path, what: &str) {
    let d = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        d.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&d.stdout)
    );
    assert_eq!(listing(a), listing(b), "{what}");
}

fn sync_ok(w: &World) -> Out {
    let out = w.run(&["-v", "sync"]);
    out.code(0);
    out
}

fn read_paths_give_the_same_tree(snapshotter: &str) {
    let ctrd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    let l = layout(scratch.path());
    ctrd.import_unpacked(&l.dir, REPO, snapshotter);
    let snaps = ctrd.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]);
    assert!(snaps.lines().count() >= 3, "not unpacked: {snaps}");

    if snapshotter == "overlayfs" {
        // containerd's unpack made the whiteouts overlay's own: a character device 0:0 for
        // the removed file, the xattr on the directory replaced whole.
        let dirs = ctrd
            .dir
            .path()
            .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
        let (mut whiteout, mut opaque) = (false, false);
        for d in std::fs::read_dir(&dirs).unwrap() {
            let t = d.unwrap().path().join("fs/srv/mediawiki");
            if let Ok(m) = std::fs::symlink_metadata(t.join("gone.php")) {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                whiteout |= m.file_type().is_char_device() && m.rdev() == 0;
            }
            let mut buf = [0u8; 4];
            opaque |= rustix::fs::lgetxattr(t.join("replaced"), "trusted.overlay.opaque", &mut buf)
                .is_ok_and(|n| &buf[..n] == b"y");
        }
        assert!(
            whiteout,
            "no overlay whiteout for gone.php in {}",
            dirs.display()
        );
        assert!(
            opaque,
            "no opaque directory for replaced/ in {}",
            dirs.display()
        );
    }
    let blobs = world(&ctrd, "blobs");
    let out = sync_ok(&blobs);
    assert!(
        !out.stderr.contains("snapshot directories"),
        "{}",
        out.stderr
    );
    // The snapshot read, under strace: it starts no process (no `ctr`, no mount, no shell).
    let snap = world(&ctrd, "snapshots");
    let trace = scratch.path().join("execve.trace");
    let out = Out::of(
        Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=execve", "-o"])
            .arg(&trace)
            .arg(bin())
            .arg("--config")
            .arg(&snap.config)
            .args(["-v", "sync"])
            .output()
            .unwrap(),
    );
    out.code(0);
    let execs: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("execve(") && !l.contains("ENOENT"))
        .map(str::to_string)
        .collect();
    assert_eq!(execs.len(), 1, "sync ran other programs: {execs:#?}");
    assert!(
        out.stderr
            .contains(&format!("{snapshotter} snapshot directories")),
        "{}",
        out.stderr
    );
    let auto = world(&ctrd, "auto");
    let out = sync_ok(&auto);
    // It says which way it read, and why (the pages of a just-unpacked image are warm).
    assert!(out.stderr.contains("sampled"), "{}", out.stderr);
    // The same root as a plain directory (umoci's unpack of V2).
    let bundle = scratch.path().join("bundle");
    sh(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{V3}", l.dir.display()))
        .arg(&bundle));
    let dir = World::new("");
    dir.write_config(&format!(
        "enabled: true\nimage: {{ source: directory, location: {} }}\n",
        bundle.join("rootfs").display()
    ));
    sync_ok(&dir);

    // What the image says, checked on one of them.
    let c = &blobs.code;
    assert_eq!(
        std::fs::read_to_string(c.join("index.php")).unwrap(),
        "<?php // v2\n"
    );
    assert!(!c.join("gone.php").exists() && !c.join("old").exists());
    assert!(!c.join("replaced/one.php").exists() && !c.join("replaced/sub").exists());
    assert!(
        !c.join("replaced/three.php").exists(),
        "the opaque directory showed a lower file"
    );
    assert_eq!(
        std::fs::read_to_string(c.join("replaced/four.php")).unwrap(),
        "four\n"
    );
    assert_eq!(
        std::fs::read_link(c.join("link")).unwrap(),
        Path::new("bin/run")
    );
    // (The tree's directories carry setgid for the deployers' group; the rest is the image's.)
    assert!(listing(c).contains("bin d 2750 "), "{}", listing(c));
    assert!(listing(c).contains("bin/run f 755"), "{}", listing(c));
    same_tree(c, &snap.code, "blobs vs snapshots");
    // The snapshot read of this first sync hashed each file only as it wrote it: the manifest
    // has the same files (path, kind, mode, size, mtime, BLAKE3) as the blobs' one. (Not the
    // directories: the native snapshotter's merged root can give one another mtime.)
    let fields = |w: &World| -> Vec<String> {
        std::fs::read_to_string(w.state_dir.join("sync/manifest.tsv"))
            .unwrap()
            .lines()
            .map(|l| l.split('\t').take(6).collect::<Vec<_>>().join("\t"))
            .filter(|l| l.split('\t').nth(1) == Some("f"))
            .collect()
    };
    assert_eq!(
        fields(&blobs),
        fields(&snap),
        "manifests: blobs vs snapshots"
    );
    assert!(
        fields(&snap).iter().any(|l| l.starts_with("index.php\t")
            && l.ends_with(&blake3::hash(b"<?php // v2\n").to_hex().to_string())),
        "{:#?}",
        fields(&snap)
    );
    same_tree(c, &auto.code, "blobs vs auto");
    same_tree(c, &dir.code, "blobs vs directory");
    // A later image: auto asks the page cache whether the snapshot's pages are warm (just
    // unpacked, they are here) and says what it chose; either way the tree is the image's.
    l.image("2026-11-30-101010-publish-4", Some(V3), |r| {
        put(r, "srv/mediawiki/index.php", "<?php // v4\n");
    });
    ctrd.import_unpacked(&l.dir, REPO, snapshotter);
    let out = sync_ok(&auto);
    assert!(out.stderr.contains("sampled"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(auto.code.join("index.php")).unwrap(),
        "<?php // v4\n"
    );
    // The sync's views went with them, their leases too.
    let snaps_after = ctrd.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]);
    assert!(
        !snaps_after.contains("mw-experimental-view"),
        "{snaps_after}"
    );
    // (One more committed snapshot: V4's layer.)
    assert_eq!(
        snaps_after.lines().count(),
        snaps.lines().count() + 1,
        "{snaps_after}"
    );
    let leases = ctrd.ctr(&["leases", "ls", "-q"]);
    assert!(!leases.contains("mw-experimental-"), "{leases}");
}

#[test]
fn overlayfs_snapshots_blobs_and_a_directory_give_the_same_tree() {
    read_paths_give_the_same_tree("overlayfs");
}

#[test]
fn native_snapshots_blobs_and_a_directory_give_the_same_tree() {
    read_paths_give_the_same_tree("native");
}

/// A containerd without the overlayfs snapshotter (a kernel without overlayfs, or the plugin
/// disabled) unpacks with the native one: the snapshot read falls back to it, and gives the
/// tree the blobs give.
#[test]
fn without_overlayfs_the_native_snapshots_are_read() {
    let ctrd = Containerd::start_without_overlayfs();
    let scratch = tempfile::tempdir().unwrap();
    let l = layout(scratch.path());
    ctrd.import_unpacked(&l.dir, REPO, "native");
    let plugins = ctrd.ctr(&["plugins", "ls"]);
    assert!(
        !plugins.contains("overlayfs"),
        "overlayfs is not off: {plugins}"
    );
    let blobs = world(&ctrd, "blobs");
    sync_ok(&blobs);
    let snap = world(&ctrd, "snapshots");
    let out = sync_ok(&snap);
    assert!(
        out.stderr.contains("native snapshot directories"),
        "{}",
        out.stderr
    );
    same_tree(
        &blobs.code,
        &snap.code,
        "native snapshots against the blobs",
    );
    let views = ctrd.ctr(&["snapshots", "--snapshotter", "native", "ls"]);
    let leases = ctrd.ctr(&["leases", "ls", "-q"]);
    assert!(
        !views.contains("mw-experimental-") && !leases.contains("mw-experimental-"),
        "the view or lease stayed: {views} {leases}"
    );
}

#[test]
fn without_snapshots_auto_reads_the_blobs_and_snapshots_fails_clearly() {
    let ctrd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    let l = layout(scratch.path());
    ctrd.import_unpacked(&l.dir, REPO, "overlayfs");
    // Remove the image's snapshots through containerd, top first; the image stays.
    loop {
        let snaps = ctrd.ctr(&["snapshots", "ls"]);
        let keys: Vec<&str> = snaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if keys.is_empty() {
            break;
        }
        // A snapshot that is nobody's parent can go.
        let parents: Vec<&str> = snaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        for k in keys.iter().filter(|k| !parents.contains(k)) {
            ctrd.ctr(&["snapshots", "rm", k]);
        }
    }
    assert!(ctrd.images().contains(V3), "{}", ctrd.images());

    let snap = world(&ctrd, "snapshots");
    let before = listing(&snap.code);
    snap.run(&["sync"])
        .code(2)
        .stderr_has("image.read is snapshots, but containerd at")
        .stderr_has("has no unpacked snapshot of");
    assert_eq!(
        listing(&snap.code),
        before,
        "a failed sync changed the tree"
    );

    let auto = world(&ctrd, "auto");
    let out = sync_ok(&auto);
    assert!(
        out.stderr.contains("no unpacked snapshot"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(auto.code.join("replaced/four.php")).unwrap(),
        "four\n"
    );
}

/// Our views and leases in containerd (by their names).
fn ours(ctrd: &Containerd) -> (Vec<String>, Vec<String>) {
    let pick = |s: String| -> Vec<String> {
        s.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|k| k.starts_with("mw-experimental-"))
            .map(str::to_string)
            .collect()
    };
    (
        pick(ctrd.ctr(&["snapshots", "ls"])),
        pick(ctrd.ctr(&["leases", "ls", "-q"])),
    )
}

#[test]
fn an_image_untagged_and_collected_during_a_snapshot_read_is_held_by_the_lease() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let ctrd = Containerd::start();
    let w = world(&ctrd, "snapshots");
    // Files large enough that hashing and copying them takes a while.
    let mut big = vec![0u8; 64 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut big)
        .unwrap();
    let l = Layout::new(w.path());
    l.image(V1, None, |r| {
        put(r, "srv/mediawiki/index.php", "<?php echo 'viewed';\n");
        for i in 0..4 {
            std::fs::write(
                r.join(format!("srv/mediawiki/big{i}.bin")),
                &big[i << 24..(i + 1) << 24],
            )
            .unwrap();
        }
    });
    l.image(V2, Some(V1), |r| put(r, "srv/mediawiki/v2.php", "v2\n"));
    ctrd.import_unpacked(&l.dir, REPO, "overlayfs");
    let mut child = w
        .cmd()
        .arg("sync")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // As soon as the sync holds its view: stop it, untag every image, collect garbage.
    let t = Instant::now();
    while ours(&ctrd).0.is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sync ended before its view was seen"
        );
        assert!(t.elapsed() < Duration::from_secs(30), "no view seen");
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped_early = child.try_wait().unwrap().is_none();
    for tag in [V1, V2] {
        ctrd.ctr(&["images", "rm", "--sync", &format!("{REPO}:{tag}")]);
    }
    assert!(!ctrd.images().contains(V2), "{}", ctrd.images());
    // `rm --sync` waited for the garbage collection: what is left is held. Our view and lease
    // are there, and the image's two committed snapshots under the view with them (after the
    // sync, below, the same collection removes them).
    let (views, leases) = ours(&ctrd);
    assert!(
        !views.is_empty() && !leases.is_empty(),
        "{views:?} {leases:?}"
    );
    let held = ctrd.ctr(&["snapshots", "ls"]);
    assert_eq!(
        held.lines().filter(|l| l.contains("Committed")).count(),
        2,
        "the image's snapshots were not held while the sync read them: {held}"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let out = Out::of(child.wait_with_output().unwrap());
    assert!(stopped_early, "the sync ended before it could be stopped");
    // The lease held the view and the snapshots below it: the sync completes, the tree is
    // the image's.
    out.code(0);
    for i in 0..4 {
        assert!(
            std::fs::read(w.code.join(format!("big{i}.bin"))).unwrap()
                == big[i << 24..(i + 1) << 24],
            "big{i}.bin differs from the image"
        );
    }
    assert_eq!(
        std::fs::read_to_string(w.code.join("v2.php")).unwrap(),
        "v2\n"
    );
    // The view and the lease went with the sync; what only they kept is collected next time.
    assert_eq!(ours(&ctrd), (vec![], vec![]));
    let other = Layout::new(&w.path().join(unique("o")));
    other.image("x", None, |r| put(r, "srv/y", "y"));
    ctrd.import(&other.dir, "example.org/gc-nudge");
    ctrd.ctr(&["images", "rm", "--sync", "example.org/gc-nudge:x"]);
    let left = ctrd.ctr(&["snapshots", "ls"]);
    assert!(
        left.lines().count() <= 1,
        "snapshots left after the lease went: {left}"
    );
}

/// `auto` with the layer cache on (the default): the node's first read fills the cache from the
/// blobs; a new image on the same layers reads only its new layer, through the cache; an image
/// rebuilt whole (nothing shared) is read from its snapshots while their pages are warm (just
/// unpacked, as after the kubelet's pull). Each sync's tree is its image's.
#[test]
fn auto_takes_the_layer_cache_first_and_warm_snapshots_for_a_rebuilt_image() {
    let ctrd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    let l = Layout::new(scratch.path());
    let w = World::new("");
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: containerd, containerd_address: {}, read: auto }}\n",
        ctrd.socket.display()
    ));
    l.image(V1, None, |r| {
        put(r, "srv/mediawiki/index.php", "<?php // v1\n");
        put(r, "srv/mediawiki/wmf-config/a.php", "a\n");
    });
    ctrd.import_unpacked(&l.dir, REPO, "overlayfs");
    let out = sync_ok(&w);
    assert!(
        out.stderr.contains("the layer cache is empty"),
        "{}",
        out.stderr
    );
    l.image(V2, Some(V1), |r| {
        put(r, "srv/mediawiki/wmf-config/b.php", "b\n");
    });
    ctrd.import_unpacked(&l.dir, REPO, "overlayfs");
    let out = sync_ok(&w);
    assert!(
        out.stderr
            .contains("the layer cache holds 1 of its 2 layers"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("snapshot directories"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(w.code.join("wmf-config/b.php")).unwrap(),
        "b\n"
    );
    l.image(V3, None, |r| {
        put(r, "srv/mediawiki/index.php", "<?php // rebuilt\n");
        put(r, "srv/mediawiki/wmf-config/a.php", "a\n");
    });
    ctrd.import_unpacked(&l.dir, REPO, "overlayfs");
    let out = sync_ok(&w);
    assert!(
        out.stderr.contains("from its snapshots") && out.stderr.contains("sampled"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(w.code.join("index.php")).unwrap(),
        "<?php // rebuilt\n"
    );
    assert!(!w.code.join("wmf-config/b.php").exists());
}

#[test]
fn files_made_here_during_a_snapshot_first_sync_are_compared_with_the_image_file_hashed_then() {
    use std::io::BufRead;
    let ctrd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    let l = layout(scratch.path());
    ctrd.import_unpacked(&l.dir, REPO, "overlayfs");
    let w = world(&ctrd, "snapshots");
    std::fs::create_dir_all(&w.code).unwrap();
    // An empty tree and no manifest: the tree is read without hashes. The sync's look for the
    // manifest that follows waits 5 s (strace), and an engineer writes two files meanwhile:
    // one as the image has it, one not.
    let manifest = w.state_dir.join("sync/manifest.tsv");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=openat"])
        .args(["-e", "inject=openat:delay_enter=5000000:when=1", "-P"])
        .arg(&manifest)
        .arg(bin())
        .arg("--config")
        .arg(&w.config)
        .args(["-v", "sync"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("read the image tree by") {
        assert!(err.read_line(&mut log).unwrap() > 0, "{log}");
    }
    std::fs::write(w.code.join("index.php"), "<?php // v2\n").unwrap();
    std::fs::create_dir(w.code.join("bin")).unwrap();
    std::fs::write(w.code.join("bin/run"), "an engineer's\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    log.push_str(&rest);
    let out = child.wait_with_output().unwrap();
    log.push_str(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("reading the image tree"), "{log}");
    // The equal file was taken as the image's; the other is kept, and said.
    assert!(
        log.contains("bin/run") && log.contains("created here and now also in the image"),
        "{log}"
    );
    assert!(!log.contains("index.php: created here"), "{log}");
    assert_eq!(
        std::fs::read_to_string(w.code.join("bin/run")).unwrap(),
        "an engineer's\n"
    );
    // The manifest has each one's image hash, read from the snapshot when it was needed.
    let lines = std::fs::read_to_string(&manifest).unwrap();
    let hash_of = |p: &str| {
        lines
            .lines()
            .find(|l| l.starts_with(&format!("{p}\t")))
            .and_then(|l| l.split('\t').nth(5))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        hash_of("index.php"),
        blake3::hash(b"<?php // v2\n").to_hex().to_string()
    );
    assert_eq!(
        hash_of("bin/run"),
        blake3::hash(b"#!/bin/sh\necho run\n").to_hex().to_string()
    );
}
