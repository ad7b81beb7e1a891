//! Generated hostile inputs for everything that parses untrusted bytes: tar layers (`..`,
//! absolute paths, symlink-then-file, hard links out, whiteouts of outside paths, duplicates,
//! huge headers, truncated streams, gzip and zstd, bombs), OCI index/manifest/config JSON,
//! blobs that do not match their digests, the configuration YAML, and the state, manifest and
//! journal files. Every case must end in a clear error (exit 2, `error:` on stderr) or a
//! correct tree, never a panic, a hang (each run is killed after a deadline and that fails the
//! test) or more than 1 GiB of address space (`prlimit`), and never a write outside the tree.

use crate::support::perm::snapshot as inodes;
use crate::support::*;
use proptest::prelude::*;
use proptest::test_runner::{
    Config as PtConfig, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use sha2::Digest;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs the binary under a 1 GiB address-space limit and a deadline; the outcome, or a failure
/// when it panicked, hung or was killed.
fn run_bounded(w: &World, args: &[&str]) -> Result<Out, TestCaseError> {
    let mut child = Command::new("prlimit")
        .arg(format!("--as={}", 1u64 << 30))
        .arg("--")
        .arg(bin())
        .arg("--config")
        .arg(&w.config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux)");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TestCaseError::fail(format!(
                "{args:?} ran longer than {DEADLINE:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = Out::of(child.wait_with_output().unwrap());
    if out.code == 101 || out.code < 0 || out.stderr.contains("panicked") {
        return Err(TestCaseError::fail(format!(
            "{args:?} panicked or died (exit {}):\n{}",
            out.code, out.stderr
        )));
    }
    if out.code == 2 && !out.stderr.contains("error:") {
        return Err(TestCaseError::fail(format!(
            "{args:?} failed without a clear error:\n{}",
            out.stderr
        )));
    }
    Ok(out)
}

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Writes a blob under its digest; returns `sha256:<hex>` and the size.
fn put_blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let h = sha256_hex(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&h), bytes).unwrap();
    (format!("sha256:{h}"), bytes.len())
}

/// An OCI layout whose one image has `layers` (bytes, media type); the JSON documents can be
/// replaced by `edit` before they are stored.
fn layout(
    dir: &Path,
    layers: &[(Vec<u8>, &str)],
    edit: &mut dyn FnMut(&str, &mut serde_json::Value),
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (bytes, mt) in layers {
        let (d, s) = put_blob(dir, bytes);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": s}));
    }
    let mut config = serde_json::json!({"architecture":"amd64","os":"linux",
        "created":"2026-11-20T10:10:10Z","rootfs":{"type":"layers","diff_ids":diff_ids},"config":{}});
    edit("config", &mut config);
    let (cd, cs) = put_blob(dir, config.to_string().as_bytes());
    let mut manifest = serde_json::json!({"schemaVersion":2,
        "mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd,"size":cs},
        "layers":descs});
    edit("manifest", &mut manifest);
    let (md, ms) = put_blob(dir, manifest.to_string().as_bytes());
    let mut index = serde_json::json!({"schemaVersion":2,"manifests":[{
        "mediaType":"application/vnd.oci.image.manifest.v1+json","digest":md,"size":ms,
        "annotations":{"org.opencontainers.image.ref.name":"2026-11-20-101010-publish-1"}}]});
    edit("index", &mut index);
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// A world with an OCI layout source, an `outside` directory next to the tree holding files
/// the image names, and a sibling of the tree.
fn world(extra: &str) -> (World, std::path::PathBuf) {
    let w = World::new("");
    let outside = w.path().join("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("keep.txt"), "precious\n").unwrap();
    std::fs::write(w.path().join("sibling"), "sibling\n").unwrap();
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: oci-layout, location: {}{extra} }}\n",
        w.path().join("layout").display()
    ));
    (w, outside)
}

#[derive(Clone, Debug)]
struct TarEntry {
    name: String,
    kind: u8,
    link: String,
    data: Vec<u8>,
    /// A size field larger than the data that follows (the stream is cut there).
    lie_size: bool,
}

const NAME_PARTS: &[&str] = &[
    "srv",
    "mediawiki",
    "a",
    "b",
    "..",
    ".",
    "",
    "etc",
    "passwd",
    ".wh.a",
    ".wh..wh..opq",
    ".wh.keep.txt",
    "outside",
    "keep.txt",
    "dir",
];
const LINKS: &[&str] = &[
    "",
    "a",
    "srv/mediawiki/a",
    "../outside/keep.txt",
    "/etc/passwd",
    "etc/passwd",
    "../../../../outside",
    "@OUT",
    "srv/mediawiki/b/a",
    "srv/mediawiki",
];

fn tar_entry() -> impl Strategy<Value = TarEntry> {
    (
        any::<bool>(),
        prop::collection::vec(0..NAME_PARTS.len(), 0..6),
        prop::sample::select(vec![b'0', b'5', b'2', b'1', b'3', b'6', b'L', b'x']),
        0..LINKS.len(),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(abs, parts, kind, link, data, lie_size)| {
            let mut name: Vec<&str> = vec!["srv", "mediawiki"];
            name.extend(parts.iter().map(|i| NAME_PARTS[*i]));
            let mut name = name.join("/");
            if abs {
                name.insert(0, '/');
            }
            TarEntry {
                name,
                kind,
                link: LINKS[link].to_string(),
                data,
                lie_size,
            }
        })
}

/// A tar stream written header by header (the tar crate's builder refuses `..`, which is the
/// point here). Long names go through GNU `L` records, as real archivers write them.
fn tar_bytes(entries: &[TarEntry], out_dir: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for e in entries {
        let link = e.link.replace("@OUT", out_dir);
        let mut name = e.name.clone();
        if e.kind == b'L' {
            // A huge GNU long-name record: the name itself is 1 MiB.
            name = "a/".repeat(1 << 19);
        }
        if name.len() > 99 {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(tar::EntryType::GNULongName);
            h.set_size(name.len() as u64 + 1);
            h.set_cksum();
            v.extend_from_slice(h.as_bytes());
            v.extend_from_slice(name.as_bytes());
            v.push(0);
            v.resize(v.len().div_ceil(512) * 512, 0);
            name.truncate(99);
        }
        let mut h = tar::Header::new_gnu();
        let kind = if e.kind == b'L' { b'0' } else { e.kind };
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(if kind == b'5' { 0o755 } else { 0o644 });
        let data: &[u8] = if kind == b'0' { &e.data } else { &[] };
        h.set_size(if e.lie_size {
            1 << 33
        } else {
            data.len() as u64
        });
        h.set_mtime(1_700_000_000);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        let l = link.len().min(99);
        old.linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
        h.set_cksum();
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        if e.lie_size {
            return v;
        }
        v.resize(v.len().div_ceil(512) * 512, 0);
    }
    v.extend_from_slice(&[0u8; 1024]);
    v
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn runner(cases: u32, file: &'static str) -> TestRunner {
    TestRunner::new_with_rng(
        PtConfig {
            cases,
            max_shrink_iters: 200,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
            ..PtConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    )
}

fn outside_state(
    w: &World,
    outside: &Path,
) -> std::collections::BTreeMap<std::path::PathBuf, crate::support::perm::Inode> {
    let mut s = inodes(outside);
    s.extend(inodes(&w.path().join("sibling")));
    s
}

#[test]
fn generated_tar_layers_end_in_a_tree_or_a_clear_error_and_never_write_outside() {
    let strategy = (
        prop::collection::vec(prop::collection::vec(tar_entry(), 1..12), 1..3),
        0u8..3,
        prop::option::weighted(0.15, 0usize..4000),
    );
    let result =
        runner(60, "tests/it/hostile.regressions").run(&strategy, |(layers, comp, cut)| {
            let (w, outside) = world("");
            let before = outside_state(&w, &outside);
            let od = outside.display().to_string();
            let blobs: Vec<(Vec<u8>, &str)> = layers
                .iter()
                .map(|entries| {
                    let mut t = tar_bytes(entries, &od);
                    if let Some(c) = cut {
                        t.truncate(c.min(t.len()));
                    }
                    match comp {
                        0 => (t, "application/vnd.oci.image.layer.v1.tar"),
                        1 => (gzip(&t), "application/vnd.oci.image.layer.v1.tar+gzip"),
                        _ => (
                            zstd::encode_all(&t[..], 1).unwrap(),
                            "application/vnd.oci.image.layer.v1.tar+zstd",
                        ),
                    }
                })
                .collect();
            layout(&w.path().join("layout"), &blobs, &mut |_, _| {});
            let out = run_bounded(&w, &["--json", "sync"])?;
            prop_assert!(
                out.code == 0 || out.code == 2,
                "exit {}: {}",
                out.code,
                out.stderr
            );
            let after = outside_state(&w, &outside);
            prop_assert_eq!(&before, &after, "something outside the tree changed");
            // Whatever is in the tree is a real entry under it: no symlink was followed to write.
            if w.code.exists() {
                for (p, _) in inodes(&w.code) {
                    prop_assert!(p.starts_with(&w.code));
                }
            }
            if out.code == 0 {
                // A second run over the same image is a no-op, and diff agrees with the tree.
                run_bounded(&w, &["sync"])?;
                let d = run_bounded(&w, &["diff"])?;
                prop_assert!(
                    d.code == 0,
                    "diff after a clean sync: {}{}",
                    d.stdout,
                    d.stderr
                );
            }
            Ok(())
        });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn decompression_bombs_stop_at_the_configured_limit_with_a_clear_error() {
    // 64 MiB of zeros in one file: a few dozen KiB compressed; the limit is 1 MiB.
    let mut h = tar::Header::new_gnu();
    h.set_path("srv/mediawiki/zeros").unwrap();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    let mut t = h.as_bytes().to_vec();
    t.resize(t.len() + (64 << 20), 0);
    t.extend_from_slice(&[0u8; 1024]);
    for (blob, mt) in [
        (gzip(&t), "application/vnd.oci.image.layer.v1.tar+gzip"),
        (
            zstd::encode_all(&t[..], 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ] {
        assert!(blob.len() < 1 << 20, "not a bomb: {} bytes", blob.len());
        let (w, outside) = world(", max_layer_bytes: 1048576");
        let before = outside_state(&w, &outside);
        layout(&w.path().join("layout"), &[(blob, mt)], &mut |_, _| {});
        let started = Instant::now();
        let out = run_bounded(&w, &["sync"]).unwrap();
        out.code(2)
            .stderr_has("image.max_layer_bytes")
            .stderr_has("decompression bomb");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!w.code.join("zeros").exists());
        assert_eq!(outside_state(&w, &outside), before);
    }
    // The same layer under the default limit is an ordinary image.
    let (w, _) = world("");
    layout(
        &w.path().join("layout"),
        &[(gzip(&t), "application/vnd.oci.image.layer.v1.tar+gzip")],
        &mut |_, _| {},
    );
    run_bounded(&w, &["sync"]).unwrap().code(0);
    assert_eq!(
        std::fs::metadata(w.code.join("zeros")).unwrap().len(),
        64 << 20
    );
}

#[test]
fn a_layer_of_more_entries_than_the_cap_stops_with_a_clear_error() {
    // 1500 empty files (a few KiB compressed) against a cap of 1000 entries per layer.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..1500 {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("srv/mediawiki/f{i}"), &b""[..])
            .unwrap();
    }
    let t = gzip(&b.into_inner().unwrap());
    let (w, outside) = world(", max_layer_entries: 1000");
    let before = outside_state(&w, &outside);
    layout(
        &w.path().join("layout"),
        &[(t.clone(), "application/vnd.oci.image.layer.v1.tar+gzip")],
        &mut |_, _| {},
    );
    let out = run_bounded(&w, &["sync"]).unwrap();
    out.code(2)
        .stderr_has(&format!("the layer sha256:{}", sha256_hex(&t)))
        .stderr_has("more than 1000 entries")
        .stderr_has("image.max_layer_entries");
    assert!(!w.code.join("f0").exists());
    assert_eq!(outside_state(&w, &outside), before);
    // Under the default cap it is an ordinary image.
    let (w, _) = world("");
    layout(
        &w.path().join("layout"),
        &[(t, "application/vnd.oci.image.layer.v1.tar+gzip")],
        &mut |_, _| {},
    );
    run_bounded(&w, &["sync"]).unwrap().code(0);
    assert!(w.code.join("f1499").exists());
}

/// A plain tar layer with one file, `srv/mediawiki/ok.php` ("fine\n").
fn one_file_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    b.append_data(&mut h, "srv/mediawiki/ok.php", &b"fine\n"[..])
        .unwrap();
    b.into_inner().unwrap()
}

#[test]
fn blobs_that_do_not_match_their_digests_are_refused_and_nothing_is_written() {
    let t = one_file_layer();
    for victim in ["layer", "manifest", "config"] {
        let (w, _) = world("");
        let dir = w.path().join("layout");
        layout(
            &dir,
            &[(t.clone(), "application/vnd.oci.image.layer.v1.tar")],
            &mut |_, _| {},
        );
        // Change one byte of the victim blob, keeping its name.
        let blobs = dir.join("blobs/sha256");
        let mut target = None;
        for e in std::fs::read_dir(&blobs).unwrap() {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            // (serde_json writes keys sorted: a manifest starts with its config descriptor.)
            let is = match victim {
                "layer" => bytes == t,
                "config" => bytes.starts_with(b"{\"architecture\""),
                _ => bytes.starts_with(b"{\"config\""),
            };
            if is {
                target = Some((p, bytes));
            }
        }
        let (p, mut bytes) = target.unwrap_or_else(|| panic!("no {victim} blob"));
        let i = bytes.len() / 2;
        bytes[i] ^= 0x20;
        std::fs::write(&p, &bytes).unwrap();
        let out = run_bounded(&w, &["sync"]).unwrap();
        assert_eq!(out.code, 2, "{victim}: {}", out.stderr);
        out.stderr_has("does not match its digest");
        assert!(
            !w.code.join("ok.php").exists(),
            "{victim}: written from a bad blob"
        );
    }
}

#[test]
fn a_config_whose_diff_ids_do_not_match_the_layers_is_refused_and_nothing_is_written() {
    let t = one_file_layer();
    for (lie, says) in [
        (
            serde_json::json!(["sha256:00", "sha256:11"]),
            "lists 2 layer diff IDs, the manifest 1",
        ),
        (
            serde_json::json!([format!("sha256:{}", "0".repeat(64))]),
            "must be equal",
        ),
    ] {
        let (w, _) = world("");
        layout(
            &w.path().join("layout"),
            &[(t.clone(), "application/vnd.oci.image.layer.v1.tar")],
            &mut |doc, v| {
                if doc == "config" {
                    v["rootfs"]["diff_ids"] = lie.clone();
                }
            },
        );
        let out = run_bounded(&w, &["sync"]).unwrap();
        assert_eq!(out.code, 2, "{}", out.stderr);
        out.stderr_has(says);
        out.stderr_has("pull the image again");
        assert!(
            !w.code.join("ok.php").exists(),
            "written from a lying image"
        );
    }
}

#[test]
fn generated_oci_json_never_panics() {
    let junk = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z:0-9/.+]{0,80}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!("sha256:../../../etc/passwd")),
        Just(serde_json::json!(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        )),
        Just(serde_json::json!([{"digest": "sha256:../x"}])),
    ];
    let keys = prop::sample::select(vec![
        ("index", "/manifests"),
        ("index", "/manifests/0/digest"),
        ("index", "/manifests/0/mediaType"),
        ("index", "/manifests/0/annotations"),
        ("index", "/schemaVersion"),
        ("manifest", "/layers"),
        ("manifest", "/layers/0/digest"),
        ("manifest", "/layers/0/mediaType"),
        ("manifest", "/config/digest"),
        ("manifest", "/mediaType"),
        ("config", "/created"),
        ("config", "/rootfs/diff_ids"),
        ("config", "/os"),
    ]);
    let strategy = prop::collection::vec((keys, junk), 1..4);
    let t = one_file_layer();
    let result = runner(40, "tests/it/hostile-json.regressions").run(&strategy, |edits| {
        let (w, outside) = world("");
        let before = outside_state(&w, &outside);
        layout(
            &w.path().join("layout"),
            &[(t.clone(), "application/vnd.oci.image.layer.v1.tar")],
            &mut |doc, v| {
                for ((d, ptr), val) in &edits {
                    if *d == doc {
                        if let Some(slot) = v.pointer_mut(ptr) {
                            *slot = val.clone();
                        }
                    }
                }
            },
        );
        for args in [&["plan", "code"][..], &["sync"], &["status"]] {
            run_bounded(&w, args)?;
        }
        prop_assert_eq!(&before, &outside_state(&w, &outside));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn generated_config_state_manifest_and_journal_files_never_panic() {
    let text = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        "[a-z_: {}\\[\\],\"'0-9\n\t.-]{0,200}".prop_map(String::into_bytes),
        Just(b"enabled: true\nimage: { source: directory, location: /nonexistent }\n".to_vec()),
        Just(b"state_dir: [\n".to_vec()),
        Just(b"code: { path: /srv/../etc }\n".to_vec()),
        Just(b"{\"reference\": 1}".to_vec()),
        Just(b"a\tf\t644\t1\t0.0\t-\t\t0\t0\t0\n../../etc/passwd\tf\t644\t9999999999999999999\t0.0\tzz\t\t0\t0\t0\n".to_vec()),
        Just(b"set\t../../outside/keep.txt\tf\t644\t1\t0.0\t-\t\t0\t0\t0\ndel\t../outside\ntmp\t../outside/keep.txt\n".to_vec()),
    ];
    let which = prop::sample::select(vec![
        "config",
        "state/state.json",
        "state/sync/last.json",
        "state/sync/manifest.tsv",
        "state/sync/manifest.delta.tsv",
        "state/sync/journal",
    ]);
    let strategy = (which, text);
    let result =
        runner(60, "tests/it/hostile-files.regressions").run(&strategy, |(which, bytes)| {
            let (w, outside) = world("");
            // A real, synced tree first, so that the damaged file is read against real state.
            let img = w.path().join("img");
            std::fs::create_dir_all(img.join("srv/mediawiki/d")).unwrap();
            std::fs::write(img.join("srv/mediawiki/d/a.php"), "a\n").unwrap();
            w.write_config(&format!(
                "enabled: true\nimage: {{ source: directory, location: {} }}\n",
                img.display()
            ));
            run_bounded(&w, &["sync"])?.code(0);
            let before = outside_state(&w, &outside);
            let target = w.path().join(which);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, &bytes).unwrap();
            for args in [
                &["config"][..],
                &["facts"],
                &["status"],
                &["diff"],
                &["plan", "code"],
                &["sync"],
                &["sync", "--force"],
            ] {
                let out = run_bounded(&w, args)?;
                prop_assert!(out.code <= 2, "{args:?}: exit {}", out.code);
            }
            prop_assert_eq!(&before, &outside_state(&w, &outside));
            Ok(())
        });
    if let Err(e) = result {
        panic!("{e}");
    }
}
