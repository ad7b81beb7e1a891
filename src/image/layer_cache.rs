//! What a layer contributes to the merged tree (its entries with their BLAKE3 hashes, its
//! whiteouts, opaque directories and report lines), kept in `state_dir/layers/` per layer
//! *chain* (the layer's digest and those below it, and `image.path`), so a new image that shares
//! its lower layers with the last one reads only its new layers: a small top layer costs about
//! its own size instead of the whole image. Entries are keyed by chain, not by layer, because a
//! layer's hard links resolve against the layers below it. The directory is bounded by
//! `image.layer_cache_bytes` (oldest files go first); 0 turns the cache off.
//!
//! Beside the layers, the merged tree of each image chain read (`tree-<key>`, the format in
//! `tree::file`): the next image that is the same layers plus new ones loads it and merges only
//! the new layers onto it (`merge::onto`), so a small layer on a million-entry image costs its
//! own entries, not a parse and a sort of the million. The newest two are kept. The tree of an
//! image one small layer above a kept tree is not stored (`layers::tree`): merging that layer
//! again is cheaper than writing the whole tree.
//!
//! The cache only saves work: a file that is missing, damaged or was written by another version
//! is a miss (and is removed), never an error; a path in it that is not a clean relative path is
//! damage. It must never be the only copy of anything, and never let a cached entry reach the
//! tree that a fresh read of the layer would not give (its key covers everything the parse
//! depends on, and files are written whole under a temporary name, then renamed).
//!
//! The format is binary, so a load runs at about the speed of reading the file, straight into
//! the tree's parts and nodes: a header (`MWXLAYER`, a little-endian u32 version), the
//! nodes (fixed-size fields, then the hash, the target and the path, length-prefixed), the
//! whiteouts, opaque directories and notes, and a BLAKE3 of all that at the end, so a cut or
//! damaged file is a miss, never wrong data. Over 500 lines: the reader's checks and the damage
//! tests sit next to the format they check.

use super::tree::file::{Hashing, HashingReader};
use super::tree::{Node, Parts};
use super::Tree;
use super::{Entry, Kind};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// The file starts with this and a little-endian u32 version.
const MAGIC: &[u8; 8] = b"MWXLAYER";
const VERSION: u32 = 3;

/// Merged trees are named this and their key.
const TREE: &str = "tree-";
/// How many merged trees are kept: the newest image's and the one before (a rollback).
const TREES_KEPT: usize = 2;

pub(super) struct LayerCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// What a cached layer adds besides its nodes: whiteouts, opaque directories, notes.
#[derive(Default, Debug, PartialEq)]
pub(super) struct Parsed {
    pub(super) whiteouts: Vec<String>,
    pub(super) opaque: Vec<String>,
    pub(super) notes: Vec<String>,
}

/// A relative path with no empty, `.` or `..` component (what the tar reader produces).
fn clean(p: &str) -> bool {
    p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl LayerCache {
    pub(super) fn new(state_dir: &std::path::Path, max_bytes: u64) -> Option<LayerCache> {
        (max_bytes > 0).then(|| LayerCache {
            dir: state_dir.join("layers"),
            max_bytes,
        })
    }

    /// Whether a layer chain with this key is cached (its file exists; it may still turn out
    /// damaged when loaded).
    pub(super) fn has(&self, key: &str) -> bool {
        self.dir.join(key).is_file()
    }

    /// Whether nothing is cached: no layered image was read on this node yet (or the cache
    /// was cleared).
    pub(super) fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.dir).map_or(true, |mut d| d.next().is_none())
    }

    /// The key of the layer at the top of `chain` ((digest, media type), lowest first).
    pub(super) fn key(prefix: &str, chain: &[(String, String)]) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"v3\n");
        h.update(prefix.as_bytes());
        for (d, mt) in chain {
            h.update(b"\n");
            h.update(d.as_bytes());
            h.update(b" ");
            h.update(mt.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    /// The key of the merged tree of `chain` (as [`LayerCache::key`], another name).
    pub(super) fn tree_key(prefix: &str, chain: &[(String, String)]) -> String {
        format!("{TREE}{}", Self::key(prefix, chain))
    }

    /// The merged tree cached under `key`; on a miss or damage (then the file goes) `None`.
    pub(super) fn load_tree(&self, key: &str) -> Option<Tree> {
        let path = self.dir.join(key);
        let f = std::fs::File::open(&path).ok()?;
        let t0 = std::time::Instant::now();
        let len = f.metadata().ok()?.len();
        match super::tree::file::read(f, len) {
            Ok(t) => {
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                log::debug!(
                    "loaded {} entries from {} in {:.3}s",
                    t.len(),
                    path.display(),
                    t0.elapsed().as_secs_f64()
                );
                Some(t)
            }
            Err(why) => {
                log::warn!(
                    "the layer cache file {} is damaged ({why}): removed, the layers are read again",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a merged tree (best effort, as [`LayerCache::store`]). Only the newest
    /// [`TREES_KEPT`] trees stay: each is about 80 bytes an entry.
    pub(super) fn store_tree(&self, key: &str, tree: &Tree) {
        let size = tree.file_bytes();
        if size > self.max_bytes {
            return;
        }
        let t0 = std::time::Instant::now();
        let tmp = self.dir.join(format!(".tmp.{key}.{}", std::process::id()));
        let r = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::File::create(&tmp))
            .and_then(|f| super::tree::file::write(tree, f))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(key)));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            log::debug!("not caching the tree ({}): {e}", self.dir.display());
            return;
        }
        log::debug!(
            "stored the merged tree in {:.3}s",
            t0.elapsed().as_secs_f64()
        );
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            let mut trees: Vec<_> = rd
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(TREE))
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect();
            trees.sort();
            trees.reverse();
            for (_, p) in trees.into_iter().skip(TREES_KEPT) {
                let _ = std::fs::remove_file(p);
            }
        }
        self.evict();
    }

    /// Appends the cached nodes of the layer `layer` (its index in the chain) to `parts` and
    /// `nodes`; on a miss (or damage: then the file goes) both are left as they were.
    pub(super) fn load(
        &self,
        key: &str,
        layer: usize,
        parts: &mut Parts,
        nodes: &mut Vec<Node>,
    ) -> Option<Parsed> {
        let path = self.dir.join(key);
        let f = std::fs::File::open(&path).ok()?;
        let (a0, n0) = (parts.mark(), nodes.len());
        match read(f, layer, parts, nodes) {
            Ok(p) => {
                // Touch it: eviction goes oldest first.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Some(p)
            }
            Err(why) => {
                parts.truncate(a0);
                nodes.truncate(n0);
                log::warn!(
                    "the layer cache file {} is damaged ({why}): removed, the layer is read again",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores one layer's parse (best effort: a failure is logged, the sync goes on).
    pub(super) fn store(
        &self,
        key: &str,
        parts: &Parts,
        nodes: &[Node],
        whiteouts: &[String],
        opaque: &[String],
        notes: &[String],
    ) {
        let strings = |l: &[String]| l.iter().map(|x| 4 + x.len() as u64).sum::<u64>();
        let size = 12
            + 8
            + nodes
                .iter()
                .map(|n| {
                    NODE_FIXED
                        + parts.path(n).len() as u64
                        + parts.hash(n).map_or(0, |_| 32)
                        + parts.target(n).map_or(0, |t| 4 + t.len() as u64)
                })
                .sum::<u64>()
            + 24
            + strings(whiteouts)
            + strings(opaque)
            + strings(notes)
            + 32;
        if size > self.max_bytes {
            return;
        }
        let tmp = self.dir.join(format!(".tmp.{key}.{}", std::process::id()));
        let r = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut w = Hashing {
                inner: BufWriter::with_capacity(1 << 18, std::fs::File::create(&tmp)?),
                hash: blake3::Hasher::new(),
            };
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            w.write_all(&(nodes.len() as u64).to_le_bytes())?;
            let mut path = String::new();
            for n in nodes {
                let e = &parts.entry(n);
                let path = parts.path_into(n, &mut path);
                let mut b = [0u8; NODE_FIXED as usize];
                b[0..8].copy_from_slice(&n.pos.to_le_bytes());
                b[8] = e.kind.letter() as u8;
                b[9..13].copy_from_slice(&e.mode.to_le_bytes());
                b[13..21].copy_from_slice(&e.size.to_le_bytes());
                b[21..29].copy_from_slice(&e.mtime.to_le_bytes());
                b[29..33].copy_from_slice(&e.mtime_nsec.to_le_bytes());
                b[33] = u8::from(e.hash.is_some()) | (u8::from(e.target.is_some()) << 1);
                b[34..38].copy_from_slice(&(path.len() as u32).to_le_bytes());
                w.write_all(&b)?;
                if let Some(h) = &e.hash {
                    w.write_all(h)?;
                }
                if let Some(t) = &e.target {
                    w.write_all(&(t.len() as u32).to_le_bytes())?;
                    w.write_all(t.as_bytes())?;
                }
                w.write_all(path.as_bytes())?;
            }
            for list in [whiteouts, opaque, notes] {
                w.write_all(&(list.len() as u64).to_le_bytes())?;
                for x in list {
                    w.write_all(&(x.len() as u32).to_le_bytes())?;
                    w.write_all(x.as_bytes())?;
                }
            }
            let sum = *w.hash.finalize().as_bytes();
            let mut f = w.inner;
            f.write_all(&sum)?;
            f.into_inner().map_err(|e| e.into_error())?;
            std::fs::rename(&tmp, self.dir.join(key))
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            log::debug!("not caching the layer ({}): {e}", self.dir.display());
            return;
        }
        self.evict();
    }

    /// Removes the oldest files until the directory fits `max_bytes`.
    fn evict(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<_> = rd
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (m.modified().ok(), m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, p) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

/// A node's fixed part: position, kind, mode, size, mtime, mtime_nsec, flags, path length.
const NODE_FIXED: u64 = 38;

/// Reads a cache file into `parts`/`nodes`; any inconsistency is an error (a miss).
fn read(
    f: std::fs::File,
    layer: usize,
    parts: &mut Parts,
    nodes: &mut Vec<Node>,
) -> Result<Parsed, String> {
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len < 12 + 8 + 24 + 32 {
        return Err("too short".into());
    }
    let mut r = BufReader::with_capacity(
        1 << 18,
        HashingReader {
            inner: f,
            left: len - 32,
            hash: blake3::Hasher::new(),
        },
    );
    let io = |e: std::io::Error| e.to_string();
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(io)?;
    if &head[..8] != MAGIC || head[8..12] != VERSION.to_le_bytes() {
        return Err("another format or version".into());
    }
    let mut left = len - 12 - 32;
    let u64_ = |r: &mut BufReader<_>, left: &mut u64| -> Result<u64, String> {
        let mut b = [0u8; 8];
        *left = left.checked_sub(8).ok_or("cut")?;
        r.read_exact(&mut b).map_err(io)?;
        Ok(u64::from_le_bytes(b))
    };
    let count = u64_(&mut r, &mut left)?;
    if count > left / NODE_FIXED {
        return Err("a count past the file's end".into());
    }
    nodes.reserve(count as usize);
    let mut buf = Vec::new();
    // Reads `n` bytes of UTF-8 (bounded by what is left of the file).
    let text =
        |r: &mut BufReader<_>, left: &mut u64, n: u64, buf: &mut Vec<u8>| -> Result<(), String> {
            *left = left.checked_sub(n).ok_or("a length past the file's end")?;
            buf.clear();
            buf.resize(n as usize, 0);
            r.read_exact(buf).map_err(io)?;
            std::str::from_utf8(buf).map_err(|_| "not UTF-8".to_string())?;
            Ok(())
        };
    for _ in 0..count {
        let mut b = [0u8; NODE_FIXED as usize];
        left = left.checked_sub(NODE_FIXED).ok_or("cut")?;
        r.read_exact(&mut b).map_err(io)?;
        let le8 = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let le4 = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let pos = le8(0);
        if super::layers::decode_pos(pos).0 != layer {
            return Err("an entry of another layer".into());
        }
        let kind =
            Kind::from_letter(std::str::from_utf8(&b[8..9]).unwrap_or("")).ok_or("a bad kind")?;
        let flags = b[33];
        if flags > 3 {
            return Err("bad flags".into());
        }
        let hash = if flags & 1 != 0 {
            let mut h = [0u8; 32];
            left = left.checked_sub(32).ok_or("cut")?;
            r.read_exact(&mut h).map_err(io)?;
            Some(h)
        } else {
            None
        };
        let target = if flags & 2 != 0 {
            let mut l = [0u8; 4];
            left = left.checked_sub(4).ok_or("cut")?;
            r.read_exact(&mut l).map_err(io)?;
            text(&mut r, &mut left, u32::from_le_bytes(l) as u64, &mut buf)?;
            Some(String::from_utf8(std::mem::take(&mut buf)).unwrap_or_default())
        } else {
            None
        };
        // A symlink has a target; a file with one is a hard link waiting for it (a clean
        // path, and no hash yet); a directory has none.
        let ok = match kind {
            Kind::Symlink => target.is_some() && hash.is_none(),
            Kind::Dir => target.is_none() && hash.is_none(),
            Kind::File => target.as_deref().is_none_or(|t| clean(t) && hash.is_none()),
        };
        if !ok {
            return Err("an entry that the tar reader cannot give".into());
        }
        text(&mut r, &mut left, le4(34) as u64, &mut buf)?;
        let p = std::str::from_utf8(&buf).unwrap_or("");
        if !clean(p) {
            return Err(format!("a path that is not clean: {p:?}"));
        }
        let entry = Entry {
            kind,
            mode: le4(9),
            size: le8(13),
            mtime: le8(21) as i64,
            mtime_nsec: le4(29),
            hash,
            target,
        };
        let n = parts.node(p, &entry, pos).map_err(|e| e.to_string())?;
        nodes.push(n);
    }
    let mut lists: [Vec<String>; 3] = Default::default();
    for (li, list) in lists.iter_mut().enumerate() {
        let n = u64_(&mut r, &mut left)?;
        if n > left / 4 {
            return Err("a count past the file's end".into());
        }
        for _ in 0..n {
            let mut l = [0u8; 4];
            left = left.checked_sub(4).ok_or("cut")?;
            r.read_exact(&mut l).map_err(io)?;
            text(&mut r, &mut left, u32::from_le_bytes(l) as u64, &mut buf)?;
            let x = String::from_utf8(std::mem::take(&mut buf)).unwrap_or_default();
            // Whiteouts are clean paths; an opaque directory may be the image root.
            if li == 0 && !clean(&x) || li == 1 && !(x.is_empty() || clean(&x)) {
                return Err(format!("a marker path that is not clean: {x:?}"));
            }
            list.push(x);
        }
    }
    if left != 0 {
        return Err("data after the last list".into());
    }
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum).map_err(io)?;
    if r.read(&mut [0u8; 1]).map_err(io)? != 0 {
        return Err("data after the checksum".into());
    }
    if *r.get_ref().hash.finalize().as_bytes() != sum {
        return Err("its checksum does not match".into());
    }
    let [whiteouts, opaque, notes] = lists;
    Ok(Parsed {
        whiteouts,
        opaque,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Parts, Vec<Node>) {
        let e = Entry {
            kind: Kind::Symlink,
            mode: 0o777,
            size: 0,
            mtime: 5,
            mtime_nsec: 0,
            hash: None,
            target: Some("a\tb".into()),
        };
        let f = Entry {
            kind: Kind::File,
            mode: 0o644,
            size: 3,
            mtime: -7,
            mtime_nsec: 1,
            hash: Some([7; 32]),
            target: None,
        };
        let link = Entry {
            kind: Kind::File,
            mode: 0,
            size: 0,
            mtime: 9,
            mtime_nsec: 0,
            hash: None,
            target: Some("x/l".into()),
        };
        let mut parts = Parts::default();
        let mut nodes = Vec::new();
        for (p, e, pos) in [("x/l", e, 9), ("x/f\nz", f, 10), ("x/h", link, 11)] {
            nodes.push(parts.node(p, &e, (1 << 40) | pos).unwrap());
        }
        (parts, nodes)
    }

    fn stored(dir: &std::path::Path) -> (LayerCache, Parts, Vec<Node>) {
        let c = LayerCache::new(dir, 1 << 20).unwrap();
        let (parts, nodes) = sample();
        c.store(
            "k",
            &parts,
            &nodes,
            &["x/w".into()],
            &["".into()],
            &["a note".into()],
        );
        (c, parts, nodes)
    }

    fn listing(parts: &Parts, nodes: &[Node]) -> Vec<(String, Entry, u64)> {
        nodes
            .iter()
            .map(|n| (parts.path(n).to_string(), parts.entry(n), n.pos))
            .collect()
    }

    #[test]
    fn a_stored_parse_loads_back_after_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let (c, parts, nodes) = stored(dir.path());
        // Appended after what the parts and nodes already hold.
        let mut a2 = Parts::default();
        let mut n2 = vec![a2.node("pre", &parts.entry(&nodes[0]), 0).unwrap()];
        let p = c.load("k", 1, &mut a2, &mut n2).unwrap();
        assert_eq!(listing(&a2, &n2[1..]), listing(&parts, &nodes));
        assert_eq!(a2.path(&n2[0]), "pre");
        assert_eq!(
            p,
            Parsed {
                whiteouts: vec!["x/w".into()],
                opaque: vec![String::new()],
                notes: vec!["a note".into()],
            }
        );
        // Another layer index in the chain is not this file's, and a miss adds nothing.
        let before = (a2.mark(), n2.len());
        assert!(c.load("k", 2, &mut a2, &mut n2).is_none());
        assert_eq!((a2.mark(), n2.len()), before);
    }

    #[test]
    fn damage_is_a_miss_and_the_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _, _) = stored(dir.path());
        let file = dir.path().join("layers/k");
        let bytes = std::fs::read(&file).unwrap();
        let check = |b: &[u8], what: &str| {
            std::fs::write(&file, b).unwrap();
            let (mut a, mut n) = (Parts::default(), Vec::new());
            assert!(c.load("k", 1, &mut a, &mut n).is_none(), "{what}");
            assert!(
                a.mark() == (0, 0, 0) && n.is_empty(),
                "{what}: left partial nodes"
            );
            assert!(!file.exists(), "{what}: the damaged file stays");
        };
        // Cut anywhere.
        for cut in [
            0,
            5,
            12,
            40,
            bytes.len() / 2,
            bytes.len() - 33,
            bytes.len() - 1,
        ] {
            check(&bytes[..cut], &format!("cut at {cut}"));
        }
        // Any one bit flipped, in the header, an entry, a path, the lists or the checksum.
        for i in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            check(&b, &format!("bit flipped at {i}"));
        }
        // A path climbing out, even with a matching checksum.
        let (mut parts, mut nodes) = sample();
        let e = parts.entry(&nodes[0]);
        nodes[0] = parts.node("x/..", &e, nodes[0].pos).unwrap();
        c.store("k", &parts, &nodes, &[], &[], &[]);
        check(&std::fs::read(&file).unwrap(), "a path with ..");
        // Extra bytes.
        let mut b = bytes.clone();
        b.push(0);
        check(&b, "data after the checksum");
    }

    #[test]
    fn merged_trees_load_back_the_newest_two_stay_and_damage_goes() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::new(dir.path(), 1 << 20).unwrap();
        let (parts, nodes) = sample();
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by(|&a, &b| parts.cmp(&nodes[a], &nodes[b]));
        let tree = Tree::from_parts(parts, order.iter().map(|&i| nodes[i]).collect());
        let rows = |t: &Tree| {
            (0..t.len())
                .map(|i| (t.path(i), t.entry(i), t.pos(i)))
                .collect::<Vec<_>>()
        };
        for k in ["tree-a", "tree-b", "tree-c"] {
            c.store_tree(k, &tree);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(c.load_tree("tree-a").is_none(), "the oldest tree went");
        assert_eq!(rows(&c.load_tree("tree-c").unwrap()), rows(&tree));
        let file = dir.path().join("layers/tree-b");
        let mut b = std::fs::read(&file).unwrap();
        let n = b.len();
        b[n / 2] ^= 1;
        std::fs::write(&file, b).unwrap();
        assert!(c.load_tree("tree-b").is_none());
        assert!(!file.exists(), "the damaged tree stays");
    }

    #[test]
    fn the_directory_stays_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::new(dir.path(), 300).unwrap();
        for k in ["a", "b", "c", "d"] {
            c.store(k, &Parts::default(), &[], &[], &[], &["n".repeat(60)]);
        }
        let total: u64 = std::fs::read_dir(dir.path().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 300, "{total}");
        assert!(c
            .load("d", 0, &mut Parts::default(), &mut Vec::new())
            .is_some());
    }
}
