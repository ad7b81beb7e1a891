//! Images as the sync reads them: a new image that shares its lower layers with the last synced
//! one does not read them again (the layer cache in `state_dir/layers`).

use crate::support::*;
use std::path::Path;

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, c) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(c.len() as u64);
        h.set_mtime(1_700_000_000);
        if p.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
        } else {
            h.set_mode(0o644);
        }
        b.append_data(&mut h, p, c.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes an OCI layout with one image per (tag, layers); returns the layers' blob paths.
fn layout(dir: &Path, images: &[(&str, Vec<&[u8]>)]) -> Vec<std::path::PathBuf> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |b: &[u8]| {
        let h = sha256_hex(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        (format!("sha256:{h}"), b.len(), blobs.join(&h))
    };
    let mut paths = Vec::new();
    let mut index = Vec::new();
    for (tag, layers) in images {
        let ls: Vec<_> = layers.iter().map(|l| put(l)).collect();
        paths.extend(ls.iter().map(|l| l.2.clone()));
        let config = serde_json::json!({"architecture":"amd64","os":"linux",
            "rootfs":{"type":"layers","diff_ids":ls.iter().map(|l| l.0.clone()).collect::<Vec<_>>()}});
        let (cd, cs, _) = put(config.to_string().as_bytes());
        let manifest = serde_json::json!({"schemaVersion":2,
            "mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd,"size":cs},
            "layers":ls.iter().map(|l| serde_json::json!({
                "mediaType":"application/vnd.oci.image.layer.v1.tar","digest":l.0,"size":l.1})).collect::<Vec<_>>()});
        let (md, ms, _) = put(manifest.to_string().as_bytes());
        index.push(
            serde_json::json!({"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "digest":md,"size":ms,"annotations":{"org.opencontainers.image.ref.name":tag}}),
        );
    }
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({"schemaVersion":2,"manifests":index}).to_string(),
    )
    .unwrap();
    paths
}

#[test]
fn a_new_image_on_the_same_lower_layers_reads_only_its_new_layer() {
    let w = World::new("");
    let dir = w.path().join("layout");
    // With its directories, so that its merged tree is kept (one with directories no layer has
    // is not), and large enough that a one-file layer is merged onto it, not all merged again.
    let many: Vec<(String, String)> = (0..24)
        .map(|i| (format!("srv/mediawiki/w/f{i}.php"), format!("{i}\n")))
        .collect();
    let mut files = vec![
        ("srv/", ""),
        ("srv/mediawiki/", ""),
        ("srv/mediawiki/w/", ""),
        ("srv/mediawiki/index.php", "<?php // base\n"),
        ("srv/mediawiki/w/a.php", "a\n"),
    ];
    files.extend(many.iter().map(|(p, c)| (p.as_str(), c.as_str())));
    let base = layer(&files);
    layout(&dir, &[("2026-11-20-101010-publish-1", vec![&base])]);
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: oci-layout, location: {} }}\n",
        dir.display()
    ));
    w.run(&["sync"]).code(0);
    assert!(
        std::fs::read_dir(w.state_dir.join("layers"))
            .unwrap()
            .count()
            > 0
    );

    // v2 = the same base + a small layer. The base blob is then made unreadable: the sync can
    // only succeed if it does not read the base again.
    let top = layer(&[("srv/mediawiki/w/hotfix.php", "hotfix\n")]);
    let paths = layout(
        &dir,
        &[
            ("2026-11-20-101010-publish-1", vec![&base]),
            ("2026-11-20-111010-publish-2", vec![&base, &top]),
        ],
    );
    std::fs::write(&paths[0], b"not the base layer any more").unwrap();
    let out = w.run(&["-v", "--json", "sync"]);
    out.code(0).stderr_has("from the layer cache");
    assert_eq!(
        out.json()["components"]["code"]["observed"]["image"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next(),
        Some("2026-11-20-111010-publish-2")
    );
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/hotfix.php")).unwrap(),
        "hotfix\n"
    );
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/a.php")).unwrap(),
        "a\n"
    );
    w.run(&["diff"]).code(0);
    // One small layer onto the cached tree below it: its own tree is not stored (merging the
    // layer again costs less than writing the whole tree), only the layer is.
    let trees = || {
        std::fs::read_dir(w.state_dir.join("layers"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("tree-")
            })
            .count()
    };
    assert_eq!(trees(), 1, "only the base image's tree is stored");

    // v3 = v2 + another small layer, with v2's top blob made unreadable too: both layers come
    // from the cache onto the base's tree, and this tree (two layers above it) is stored.
    let top2 = layer(&[("srv/mediawiki/w/hotfix2.php", "hotfix 2\n")]);
    let paths = layout(
        &dir,
        &[
            ("2026-11-20-101010-publish-1", vec![&base]),
            ("2026-11-20-111010-publish-2", vec![&base, &top]),
            ("2026-11-20-121010-publish-3", vec![&base, &top, &top2]),
        ],
    );
    std::fs::write(&paths[0], b"not the base layer any more").unwrap();
    std::fs::write(&paths[2], b"not the top layer any more").unwrap();
    w.run(&["-v", "sync"])
        .code(0)
        .stderr_has("the merged tree of 1 of the 3 layers");
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/hotfix2.php")).unwrap(),
        "hotfix 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/hotfix.php")).unwrap(),
        "hotfix\n"
    );
    assert_eq!(trees(), 2, "the base's tree and v3's");
    w.run(&["diff"]).code(0);

    // With the cache off, the damaged base is read, and refused by its digest.
    let w2 = World::new("");
    w2.write_config(&format!(
        "enabled: true\nimage: {{ source: oci-layout, location: {}, layer_cache_bytes: 0 }}\n",
        dir.display()
    ));
    w2.run(&["sync"])
        .code(2)
        .stderr_has("does not match its digest");
    assert!(!w2.state_dir.join("layers").exists());
}
