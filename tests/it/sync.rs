//! `sync`, `diff`, `reset`: the tree follows the newest image, engineers' edits are kept,
//! nothing outside the tree is ever touched, and a killed run is completed by the next.

use crate::support::containerd::Containerd;
use crate::support::oci::{put, Layout};
use crate::support::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const REPO: &str = "docker-registry.discovery.wmnet/restricted/mediawiki-multiversion";

/// What a user would compare: every entry with its type and content / target / exec bit.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn rec(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("l {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if md.is_dir() {
                out.insert(rel, "d".into());
                rec(root, &p, out);
            } else {
                let x = md.permissions().mode() & 0o100 != 0;
                out.insert(
                    rel,
                    format!(
                        "f{} {}",
                        if x { "x" } else { "" },
                        String::from_utf8_lossy(&std::fs::read(&p).unwrap())
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        rec(root, root, &mut out);
    }
    out
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

fn tree_of_v1(root: &Path) {
    let t = root.join("srv/mediawiki");
    put(&t, "index.php", "<?php // v1 index\n");
    put(&t, "LocalSettings.php", "<?php $wgSitename = 'v1';\n");
    put(&t, "php-1.44/includes/Setup.php", "<?php // setup v1\n");
    put(&t, "php-1.44/includes/Gone.php", "<?php // removed in v2\n");
    put(&t, "php-1.44/maintenance/run", "#!/bin/sh\necho v1\n");
    std::fs::set_permissions(
        t.join("php-1.44/maintenance/run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    link(&t, "php", "php-1.44");
    put(root, "etc/not-synced.conf", "outside image.path\n");
}

fn tree_of_v2(root: &Path) {
    let t = root.join("srv/mediawiki");
    put(&t, "index.php", "<?php // v2 index\n");
    put(&t, "LocalSettings.php", "<?php $wgSitename = 'v2';\n");
    std::fs::remove_file(t.join("php-1.44/includes/Gone.php")).unwrap();
    put(&t, "php-1.44/includes/New.php", "<?php // new in v2\n");
}

fn sync_json(w: &World, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json", "sync"];
    a.extend_from_slice(args);
    let out = w.run(&a);
    out.code(0);
    out.json()["components"]["code"].clone()
}

#[test]
fn containerd_newest_image_is_synced_edits_are_kept_and_force_diff_reset_work() {
    let ctrd = Containerd::start();
    let w = World::new("");
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: containerd, containerd_address: {} }}\n",
        ctrd.socket.display()
    ));
    let layout = Layout::new(w.path());
    layout.image("2026-11-20-101010-publish-1", None, tree_of_v1);
    // The reference tree of v1, as umoci unpacks it.
    let v1 = w.path().join("v1");
    tree_of_v1(&v1);
    ctrd.import(&layout.dir, REPO);
    // A newer image of another repository (whose name starts with ours) is never picked.
    std::fs::create_dir_all(w.path().join("other")).unwrap();
    let other = Layout::new(&w.path().join("other"));
    other.image("2027-01-01-000000-publish-1", None, |r| {
        put(r, "srv/mediawiki/index.php", "debug image\n")
    });
    ctrd.import(&other.dir, &format!("{REPO}-debug"));

    let plan = w.run(&["plan", "code"]);
    plan.code(1);
    let code = sync_json(&w, &[]);
    assert_eq!(
        code["observed"]["image"],
        format!("{REPO}:2026-11-20-101010-publish-1")
    );
    assert_eq!(snapshot(&w.code), snapshot(&v1.join("srv/mediawiki")));
    w.run(&["plan", "code"]).code(0);

    // An engineer edits a file and adds one.
    put(
        &w.code,
        "LocalSettings.php",
        "<?php $wgSitename = 'mine';\n",
    );
    put(
        &w.code,
        "php-1.44/includes/Mine.php",
        "<?php // engineer's\n",
    );

    // v2 (newer by its tag), and an older-dated publish with a larger N that must lose.
    layout.image(
        "2026-11-21-093000-publish-2",
        Some("2026-11-20-101010-publish-1"),
        tree_of_v2,
    );
    layout.image(
        "2026-11-19-235959-publish-99",
        Some("2026-11-20-101010-publish-1"),
        |r| put(r, "srv/mediawiki/index.php", "old\n"),
    );
    ctrd.import(&layout.dir, REPO);
    assert!(ctrd.images().contains("publish-99"));
    w.run(&["plan", "code"]).code(1);
    let code = sync_json(&w, &[]);
    assert_eq!(
        code["observed"]["image"],
        format!("{REPO}:2026-11-21-093000-publish-2")
    );
    assert_eq!(code["observed"]["local_edits"], 1);
    let notes = code["notes"].to_string();
    assert!(notes.contains("LocalSettings.php"), "{notes}");

    let mut want = {
        let v2 = w.path().join("v2");
        tree_of_v1(&v2);
        tree_of_v2(&v2);
        snapshot(&v2.join("srv/mediawiki"))
    };
    want.insert(
        "LocalSettings.php".into(),
        "f <?php $wgSitename = 'mine';\n".into(),
    );
    want.insert(
        "php-1.44/includes/Mine.php".into(),
        "f <?php // engineer's\n".into(),
    );
    assert_eq!(snapshot(&w.code), want);

    // diff shows the edit and the new file.
    let d = w.run(&["diff", "--patch"]);
    d.code(1);
    assert!(d.stdout.contains("M LocalSettings.php"), "{}", d.stdout);
    assert!(
        d.stdout.contains("A php-1.44/includes/Mine.php"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout.contains("-<?php $wgSitename = 'v2';"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout.contains("+<?php $wgSitename = 'mine';"),
        "{}",
        d.stdout
    );
    let dj = w.run(&["--json", "diff"]).json();
    assert_eq!(dj["modified"], serde_json::json!(["LocalSettings.php"]));

    // --force backs the edit up, then overwrites it; the engineer's own file stays.
    let code = sync_json(&w, &["--force"]);
    assert_eq!(code["counts"]["backed_up"], 1, "{code}");
    assert_eq!(
        std::fs::read_to_string(w.code.join("LocalSettings.php")).unwrap(),
        "<?php $wgSitename = 'v2';\n"
    );
    assert!(w.code.join("php-1.44/includes/Mine.php").exists());
    let backups = find_files(&w.state_dir.join("backups"));
    assert!(
        backups
            .iter()
            .any(|(p, c)| p.ends_with("LocalSettings.php") && c.contains("'mine'")),
        "{backups:?}"
    );

    // reset undoes a new edit (backed up first).
    put(&w.code, "index.php", "broken\n");
    w.run(&["diff", "index.php"]).code(1);
    w.run(&["reset", &w.code.join("index.php").display().to_string()])
        .code(0);
    assert_eq!(
        std::fs::read_to_string(w.code.join("index.php")).unwrap(),
        "<?php // v2 index\n"
    );
    w.run(&["diff", "index.php"]).code(0);
    assert!(find_files(&w.state_dir.join("backups"))
        .iter()
        .any(|(p, c)| p.ends_with("index.php") && c == "broken\n"));
    // The metrics file carries the sync.
    let prom = std::fs::read_to_string(&w.metrics).unwrap();
    assert!(
        prom.contains(&format!(
            "mw_experimental_code_image_info{{image=\"{REPO}:2026-11-21-093000-publish-2\""
        )),
        "{prom}"
    );
    assert!(prom.contains("mw_experimental_code_edits_kept "), "{prom}");
    assert!(
        prom.contains("mw_experimental_last_run_success{command=\"sync\"} 1"),
        "{prom}"
    );
}

fn find_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(find_files(&p));
        } else {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap_or_default(),
            ));
        }
    }
    out
}

#[test]
fn unchanged_image_leaves_the_tree_alone_and_switch_off_does_nothing() {
    let w = World::new("");
    let img = w.path().join("img");
    tree_of_v1(&img);
    w.write_config(&format!(
        "enabled: false\nimage: {{ source: directory, location: {} }}\n",
        img.display()
    ));
    w.run(&["sync"]).code(0);
    assert!(
        !w.code.exists(),
        "switch off: sync must not create the tree"
    );
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: directory, location: {} }}\n",
        img.display()
    ));
    w.run(&["sync"]).code(0);
    // Deleted here; the image did not change: the next sync leaves it deleted.
    std::fs::remove_file(w.code.join("index.php")).unwrap();
    let out = w.run(&["sync"]);
    out.code(0).stderr_has("nothing to do");
    assert!(!w.code.join("index.php").exists());
    let d = w.run(&["diff"]);
    d.code(1);
    assert!(d.stdout.contains("D index.php"), "{}", d.stdout);
}

#[test]
fn missing_image_source_is_a_clear_error_and_nothing_is_written() {
    let w = World::new("");
    let layout = w.path().join("empty-layout");
    std::fs::create_dir_all(&layout).unwrap();
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: oci-layout, location: {} }}\n",
        layout.display()
    ));
    w.run(&["sync"])
        .code(2)
        .stderr_has("reading the OCI layout index")
        .stderr_has(&layout.display().to_string());
    assert!(!w.code.exists());
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: containerd, containerd_address: {} }}\n",
        w.path().join("no.sock").display()
    ));
    w.run(&["plan", "code"])
        .code(2)
        .stderr_has("check that containerd runs");
    assert!(!w.code.exists());
}

#[test]
fn oci_layout_with_whiteouts_follows_the_newest_image() {
    let w = World::new("");
    let layout = Layout::new(w.path());
    layout.image("2026-11-20-101010-publish-1", None, tree_of_v1);
    layout.image(
        "2026-11-20-101010-publish-10",
        Some("2026-11-20-101010-publish-1"),
        |r| {
            tree_of_v2(r);
            std::fs::remove_dir_all(r.join("srv/mediawiki/php-1.44/maintenance")).unwrap();
        },
    );
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: oci-layout, location: {} }}\n",
        layout.dir.display()
    ));
    let code = sync_json(&w, &[]);
    assert_eq!(
        code["observed"]["image"],
        format!("{REPO}:2026-11-20-101010-publish-10")
    );
    let want = {
        let v = w.path().join("want");
        tree_of_v1(&v);
        tree_of_v2(&v);
        std::fs::remove_dir_all(v.join("srv/mediawiki/php-1.44/maintenance")).unwrap();
        snapshot(&v.join("srv/mediawiki"))
    };
    assert_eq!(snapshot(&w.code), want);
}

/// Writes a tar header + data with a raw name (the tar crate's own setters refuse `..`).
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: &str,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn sha256(path: &Path) -> String {
    sh(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// An OCI layout with one hand-made layer.
fn layout_with_layer(dir: &Path, tag: &str, layer: &[u8]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put_blob = |bytes: &[u8]| -> (String, usize) {
        let tmp = dir.join("tmp-blob");
        std::fs::write(&tmp, bytes).unwrap();
        let h = sha256(&tmp);
        std::fs::rename(&tmp, blobs.join(&h)).unwrap();
        (format!("sha256:{h}"), bytes.len())
    };
    let (ld, ls) = put_blob(layer);
    let config = serde_json::json!({"architecture":"amd64","os":"linux","created":"2026-11-20T10:10:10Z",
        "rootfs":{"type":"layers","diff_ids":[ld]},"config":{}});
    let (cd, cs) = put_blob(config.to_string().as_bytes());
    let manifest = serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd,"size":cs},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":ld,"size":ls}]});
    let (md, ms) = put_blob(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "digest":md,"size":ms,"annotations":{"org.opencontainers.image.ref.name":tag}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

#[test]
fn hostile_image_creates_and_changes_nothing_outside_the_tree() {
    let w = World::new("");
    let outside = w.path().join("outside");
    put(&outside, "keep.txt", "precious\n");
    let before = snapshot(w.path().join("outside").as_path());
    let o = outside.display().to_string();
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType as T;
    raw_entry(&mut b, "srv/", T::Directory, "", b"");
    raw_entry(&mut b, "srv/mediawiki/", T::Directory, "", b"");
    raw_entry(&mut b, "srv/mediawiki/ok.php", T::Regular, "", b"fine\n");
    // `..` entries, relative to the image root and to the tree.
    raw_entry(&mut b, "../outside/escape1", T::Regular, "", b"x");
    raw_entry(
        &mut b,
        "srv/mediawiki/../../outside/keep.txt",
        T::Regular,
        "",
        b"pwned",
    );
    raw_entry(
        &mut b,
        "srv/mediawiki/a/../../../../../outside/escape2",
        T::Regular,
        "",
        b"x",
    );
    // An absolute symlink to a directory, and a file written through it.
    raw_entry(&mut b, "srv/mediawiki/abs", T::Symlink, &o, b"");
    raw_entry(
        &mut b,
        "srv/mediawiki/abs/through.txt",
        T::Regular,
        "",
        b"x",
    );
    raw_entry(
        &mut b,
        "srv/mediawiki/abs/keep.txt",
        T::Regular,
        "",
        b"pwned",
    );
    // A relative symlink climbing out, and a file through it.
    raw_entry(
        &mut b,
        "srv/mediawiki/rel",
        T::Symlink,
        "../../outside",
        b"",
    );
    raw_entry(
        &mut b,
        "srv/mediawiki/rel/through2.txt",
        T::Regular,
        "",
        b"x",
    );
    // A hard link to a file outside the tree, and one climbing out.
    raw_entry(&mut b, "etc/passwd", T::Regular, "", b"root:x:0:0\n");
    raw_entry(&mut b, "srv/mediawiki/hl", T::Link, "etc/passwd", b"");
    raw_entry(
        &mut b,
        "srv/mediawiki/hl2",
        T::Link,
        "../outside/keep.txt",
        b"",
    );
    // A directory that the live tree has as a symlink (planted below).
    raw_entry(&mut b, "srv/mediawiki/planted/", T::Directory, "", b"");
    raw_entry(
        &mut b,
        "srv/mediawiki/planted/through3.txt",
        T::Regular,
        "",
        b"x",
    );
    // A whiteout trying to delete outside.
    raw_entry(
        &mut b,
        "srv/mediawiki/../../outside/.wh.keep.txt",
        T::Regular,
        "",
        b"",
    );
    let layer = b.into_inner().unwrap();
    let layout = w.path().join("layout");
    layout_with_layer(&layout, "2026-11-20-101010-publish-1", &layer);

    // An engineer's symlink in the live tree where the image has a directory.
    std::fs::create_dir_all(&w.code).unwrap();
    link(&w.code, "planted", &o);
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: oci-layout, location: {} }}\n",
        layout.display()
    ));
    let out = w.run(&["--json", "sync"]);
    out.code(0);
    let notes = out.json()["components"]["code"]["notes"].to_string();
    assert!(notes.contains("planted"), "{notes}");
    assert!(notes.contains(".."), "{notes}");

    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the tree changed"
    );
    let live = snapshot(&w.code);
    assert_eq!(live.get("ok.php").map(String::as_str), Some("f fine\n"));
    assert_eq!(live.get("abs"), Some(&format!("l {o}")));
    assert_eq!(live.get("rel").map(String::as_str), Some("l ../../outside"));
    assert_eq!(live.get("planted"), Some(&format!("l {o}")));
    assert!(
        !live.contains_key("hl"),
        "a hard link to a file outside the tree: {live:?}"
    );
    assert!(!live.contains_key("hl2"), "{live:?}");
    assert!(!w.path().join("escape1").exists() && !w.path().join("srv/escape1").exists());
    assert_eq!(
        live.keys().filter(|k| k.contains("through")).count(),
        0,
        "{live:?}"
    );
}

fn mutate_v2(img: &Path) {
    let t = img.join("srv/mediawiki");
    for i in 0..40 {
        match i % 4 {
            0 => put(&t, &format!("d{}/f{i}.php", i % 5), &format!("v2 {i}\n")),
            1 => {
                let _ = std::fs::remove_file(t.join(format!("d{}/f{i}.php", i % 5)));
            }
            2 => put(&t, &format!("new{}/n{i}.php", i % 3), &format!("new {i}\n")),
            _ => {}
        }
    }
    std::fs::remove_dir_all(t.join("d4")).unwrap();
    put(&t, "d4", "d4 is a file now\n");
    let _ = std::fs::remove_file(t.join("l0"));
    link(&t, "l0", "d1");
}

fn make_v1(img: &Path) {
    let t = img.join("srv/mediawiki");
    for i in 0..40 {
        put(&t, &format!("d{}/f{i}.php", i % 5), &format!("v1 {i}\n"));
    }
    link(&t, "l0", "d0");
}

#[test]
fn sigkill_at_any_point_is_completed_by_the_next_run() {
    // The uninterrupted result.
    let reference = {
        let w = World::new("");
        let img = w.path().join("img");
        make_v1(&img);
        w.write_config(&format!(
            "enabled: true\nimage: {{ source: directory, location: {} }}\n",
            img.display()
        ));
        w.run(&["sync"]).code(0);
        mutate_v2(&img);
        w.run(&["sync"]).code(0);
        snapshot(&w.code)
    };
    // Every kill point, from the first step of the run to past its last.
    for n in 1u32.. {
        let w = World::new("");
        let img = w.path().join("img");
        make_v1(&img);
        w.write_config(&format!(
            "enabled: true\nimage: {{ source: directory, location: {} }}\n",
            img.display()
        ));
        w.run(&["sync"]).code(0);
        mutate_v2(&img);
        let killed = w
            .cmd()
            .arg("sync")
            .env("MW_EXPERIMENTAL_TEST_KILL_AFTER", n.to_string())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        if killed.success() {
            assert!(n > 40, "only {n} steps: the test no longer interrupts much");
            break;
        }
        assert_eq!(killed.signal(), Some(9), "kill point {n}: {killed}");
        let out = w.run(&["--json", "sync"]);
        out.code(0);
        let code = &out.json()["components"]["code"];
        assert!(
            code["counts"].get("kept_edits").is_none(),
            "kill point {n}: {code}"
        );
        assert_eq!(code["observed"]["local_edits"], 0, "kill point {n}: {code}");
        assert_eq!(snapshot(&w.code), reference, "kill point {n}");
        w.run(&["diff"]).code(0);
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for name in ["mw-experimental-sync.service", "mw-experimental-sync.timer"] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        // verify checks that ExecStart exists: point it at the binary under test.
        let text = text.replace("/usr/bin/mw-experimental", &bin().display().to_string());
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("mw-experimental-sync.service"))
        .arg(dir.path().join("mw-experimental-sync.timer"))
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let timer = std::fs::read_to_string(src.join("mw-experimental-sync.timer")).unwrap();
    assert!(timer.contains("OnCalendar=hourly") && timer.contains("RandomizedDelaySec="));
}

/// A world whose `directory` image (at the returned root) holds `w/f00.php`..`w/f39.php`,
/// synced once.
fn synced_forty_files() -> (World, std::path::PathBuf) {
    let w = World::new("");
    let img = w.path().join("img");
    let root = img.join("srv/mediawiki");
    for i in 0..40 {
        let p = root.join(format!("w/f{i:02}.php"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{i}\n")).unwrap();
    }
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: directory, location: {} }}\n",
        img.display()
    ));
    w.run(&["sync"]).code(0);
    (w, root)
}

/// The old manifest is read in two halves side by side when it is large (in the tests' debug
/// builds, nearly always): damage in its second half is still reported at its own line, and
/// the sync changes nothing.
#[test]
fn a_damaged_manifest_is_reported_at_its_line_and_nothing_is_written() {
    let (w, root) = synced_forty_files();
    // Two lines near the end swapped: out of order.
    let manifest = w.state_dir.join("sync/manifest.tsv");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let k = lines.len() - 5;
    lines.swap(k, k + 1);
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    std::fs::write(root.join("w/new.php"), "new\n").unwrap();
    let before = snapshot(&w.code);
    w.run(&["sync"])
        .code(2)
        .stderr_has(&format!("line {} is damaged (out of order)", k + 2));
    assert_eq!(snapshot(&w.code), before, "nothing written");
    assert!(!w.code.join("w/new.php").exists());
}

/// A sync that changes few paths writes their lines to the manifest's delta and leaves the
/// manifest as it was; every reader (the next sync, `diff`) reads the two as one; a damaged
/// delta is reported at its line and nothing is written; without it the next sync compares
/// the live tree and completes, and a sync that changes every path writes the manifest whole.
#[test]
fn a_small_change_writes_the_manifests_delta_which_every_reader_applies() {
    let (w, root) = synced_forty_files();
    let manifest = w.state_dir.join("sync/manifest.tsv");
    let delta = w.state_dir.join("sync/manifest.delta.tsv");
    let whole = std::fs::read(&manifest).unwrap();
    assert!(!delta.exists());
    // The image changes one file, drops one and adds one; an engineer edits another.
    std::fs::write(root.join("w/f03.php"), "three\n").unwrap();
    std::fs::remove_file(root.join("w/f04.php")).unwrap();
    std::fs::write(root.join("w/g.php"), "g\n").unwrap();
    std::fs::write(w.code.join("w/f05.php"), "an engineer's\n").unwrap();
    w.run(&["sync"]).code(0);
    assert_eq!(
        std::fs::read(&manifest).unwrap(),
        whole,
        "the manifest as it was"
    );
    let d = std::fs::read_to_string(&delta).unwrap();
    let paths: Vec<&str> = d
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    // (The directory too: its mtime in the image changed with its entries.)
    assert_eq!(paths, ["w", "w/f03.php", "w/f04.php", "w/g.php"], "{d}");
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/f03.php")).unwrap(),
        "three\n"
    );
    assert!(!w.code.join("w/f04.php").exists());
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/g.php")).unwrap(),
        "g\n"
    );
    let out = w.run(&["diff"]);
    out.code(1); // (as diff(1): there are differences)
    assert!(
        out.stdout.contains("1 modified, 0 added, 0 deleted"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("w/f05.php"), "{}", out.stdout);
    // The image drops g.php again: the delta's line goes (g.php was never in the manifest).
    std::fs::remove_file(root.join("w/g.php")).unwrap();
    w.run(&["sync"]).code(0);
    assert!(!w.code.join("w/g.php").exists());
    // A damaged delta: an error at its line, nothing written.
    let d = std::fs::read_to_string(&delta).unwrap();
    let mut lines: Vec<&str> = d.lines().collect();
    lines.swap(1, 2);
    std::fs::write(&delta, lines.join("\n") + "\n").unwrap();
    std::fs::write(root.join("w/f06.php"), "six\n").unwrap();
    let before = snapshot(&w.code);
    w.run(&["sync"])
        .code(2)
        .stderr_has("manifest.delta.tsv line 3 is damaged (out of order)");
    assert_eq!(snapshot(&w.code), before, "nothing written");
    // Moved away: the manifest reads as the first sync left it, so the files the image
    // changed since are compared with it: the live ones equal to the image are taken.
    std::fs::remove_file(&delta).unwrap();
    w.run(&["sync"]).code(0);
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/f06.php")).unwrap(),
        "six\n"
    );
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/f05.php")).unwrap(),
        "an engineer's\n"
    );
    // Every path changed: the manifest is written whole, the delta goes.
    for i in 0..40 {
        if i != 4 {
            std::fs::write(root.join(format!("w/f{i:02}.php")), format!("{i} again\n")).unwrap();
        }
    }
    w.run(&["sync"]).code(0);
    assert!(!delta.exists());
    assert_ne!(std::fs::read(&manifest).unwrap(), whole);
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/f10.php")).unwrap(),
        "10 again\n"
    );
}
