//! Layered images (OCI layout and containerd): the layers' tar streams (plain, gzip or zstd)
//! read, in order, into one set of tree parts and node vector, which `merge` turns into the code tree
//! below `image.path` (applying whiteouts and opaque directories); and the chosen files'
//! contents streamed back out of the layers. Tar entries are data: an entry whose path climbs
//! out with `..` or is not UTF-8, a hard link to anything but a file of the tree, a device or
//! fifo, or an entry below a symlink or a file is dropped and reported; entries outside
//! `image.path` (and not on the way to it) are not kept at all. Every layer is read whole and
//! checked against its digest before its tree is used, and stopped at `image.max_layer_bytes`
//! unpacked and `image.max_layer_entries` entries. It must never produce a path outside the
//! tree, and never write to the disk (nothing is unpacked; `sync` does the writing) except the
//! layer cache (`layer_cache`): a layer chain parsed before is not read again.

use super::layer_cache::LayerCache;
use super::merge::Marks;
use super::oci::Store;
use super::tree::{Node, Parts};
use super::verify::Limited;
use super::{clean_mode, Entry, Kind, Tree};
use crate::fs::at;
use anyhow::{bail, Context, Result};
use std::io::Read;

/// The limits on one layer: unpacked bytes and entries.
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_bytes: u64,
    pub(super) max_entries: u64,
}

/// The code tree (below `prefix`) of the merged layers. Report lines for anything dropped go to
/// `notes`; each file of the tree knows where its content is (layer, entry index in the tar).
/// Each layer stops at the given limits; the cache (if any) spares re-reading a layer chain.
///
/// How: every layer's entries under `prefix` (and on the way to it) go into one set of tree parts and
/// one node vector, each node carrying its position (layer, tar index), which is also its
/// sequence; one sort by (path, sequence); hard links resolved against what was visible when
/// they were read; then one pass keeps the last entry of each path unless a whiteout or opaque
/// marker of a higher layer, or a non-directory of a higher sequence at an ancestor, hides it.
pub(super) fn tree(
    store: &Store,
    layers: &[(String, String)],
    prefix: &str,
    reference: &str,
    (limits, cache): (Limits, Option<&LayerCache>),
    notes: &mut Vec<String>,
) -> Result<Tree> {
    let mut ing = Ingest::new(prefix);
    let under = |p: &str| prefix.is_empty() || p == prefix || p.starts_with(&format!("{prefix}/"));
    let notes_before_all = notes.len();
    // The merged tree of the longest chain of lower layers read before, if the cache has it:
    // then only the layers above it are read and merged onto it.
    let (mut base, mut done) = (None, 0);
    if let Some(c) = cache {
        for n in (1..=layers.len()).rev() {
            if let Some(t) = c.load_tree(&LayerCache::tree_key(prefix, &layers[..n])) {
                log::debug!(
                    "the merged tree of {n} of the {} layers: from the layer cache",
                    layers.len()
                );
                if n == layers.len() {
                    return Ok(t);
                }
                let (parts, nodes) = t.into_parts();
                ing.parts = parts;
                (base, done) = (Some(nodes), n);
                break;
            }
        }
    }
    for (li, (digest, mt)) in layers.iter().enumerate().skip(done) {
        let key = cache.map(|c| (c, LayerCache::key(prefix, &layers[..=li])));
        if let Some(p) = key
            .as_ref()
            .and_then(|(c, k)| c.load(k, li, &mut ing.parts, &mut ing.nodes))
        {
            log::debug!("layer {digest}: from the layer cache");
            notes.extend(p.notes);
            ing.marks.add(li, p.whiteouts, p.opaque);
            continue;
        }
        let first_node = ing.nodes.len();
        let notes_before = notes.len();
        let (raw, verified) = store.open_verified(digest)?;
        let r = Limited::new(decompress(mt, raw)?, limits.max_bytes, digest);
        let mut ar = tar::Archive::new(r);
        let mut whiteouts = Vec::new();
        let mut opaque = Vec::new();
        // A damaged or tampered blob reports its digest mismatch, not whatever the tar parser
        // tripped over first.
        let parsed = (|| -> Result<()> {
            let entries = ar
                .entries()
                .with_context(|| format!("reading the layer {digest}"))?;
            for (ei, e) in entries.enumerate() {
                if ei as u64 >= limits.max_entries {
                    bail!(
                        "the layer {digest} has more than {} entries (image.max_layer_entries): \
                         refusing it, it would exhaust memory; raise image.max_layer_entries if \
                         the image is genuine",
                        limits.max_entries
                    );
                }
                let mut e = e.with_context(|| format!("reading the layer {digest}"))?;
                let raw = e.path_bytes().into_owned();
                let Some(path) = normalize(&raw) else {
                    notes.push(format!(
                        "image: dropped the entry {:?} in layer {digest}: it climbs out with '..' or is not UTF-8",
                        String::from_utf8_lossy(&raw)
                    ));
                    continue;
                };
                if path.is_empty() {
                    continue;
                }
                let (parent, name) = at::split(&path);
                if name == ".wh..wh..opq" {
                    opaque.push(parent.to_string());
                    continue;
                }
                if let Some(hidden) = name.strip_prefix(".wh.") {
                    whiteouts.push(if parent.is_empty() {
                        hidden.to_string()
                    } else {
                        format!("{parent}/{hidden}")
                    });
                    continue;
                }
                if place(prefix, &path).is_none() {
                    continue;
                }
                let h = e.header().clone();
                let raw_mode = h.mode().unwrap_or(0o644);
                let mtime = h.mtime().unwrap_or(0) as i64;
                let et = h.entry_type();
                let entry = if et.is_dir() {
                    Entry {
                        kind: Kind::Dir,
                        mode: clean_mode(Kind::Dir, raw_mode),
                        size: 0,
                        mtime,
                        mtime_nsec: 0,
                        hash: None,
                        target: None,
                    }
                } else if et.is_symlink() {
                    let t = e
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    if t.is_empty() {
                        continue;
                    }
                    Entry {
                        kind: Kind::Symlink,
                        mode: 0o777,
                        size: 0,
                        mtime,
                        mtime_nsec: 0,
                        hash: None,
                        target: Some(t),
                    }
                } else if et.is_hard_link() {
                    // Same content as an earlier entry: resolved once all layers are read.
                    match e.link_name_bytes().and_then(|b| normalize(&b)) {
                        Some(t) if !t.is_empty() => Entry {
                            kind: Kind::File,
                            mode: 0,
                            size: 0,
                            mtime,
                            mtime_nsec: 0,
                            hash: None,
                            target: Some(t),
                        },
                        _ => {
                            notes.push(format!(
                                "image: dropped the hard link {path:?}: its target is not a file of the tree"
                            ));
                            continue;
                        }
                    }
                } else if et.is_file() {
                    let hash = if under(&path) {
                        let mut hs = blake3::Hasher::new();
                        std::io::copy(&mut e, &mut hs)
                            .with_context(|| format!("reading {path:?} in the layer {digest}"))?;
                        Some(*hs.finalize().as_bytes())
                    } else {
                        None
                    };
                    Entry {
                        kind: Kind::File,
                        mode: clean_mode(Kind::File, raw_mode),
                        size: h.size().unwrap_or(0),
                        mtime,
                        mtime_nsec: 0,
                        hash,
                        target: None,
                    }
                } else {
                    if under(&path) {
                        notes.push(format!(
                            "image: skipped {path:?}: a device, fifo or other special file"
                        ));
                    }
                    continue;
                };
                ing.add(&path, &entry, li, ei as u64)?;
            }
            Ok(())
        })();
        if let Err(e) = parsed {
            std::io::copy(&mut ar.into_inner(), &mut std::io::sink())
                .with_context(|| format!("reading the layer {digest}"))?;
            return Err(e);
        }
        // Read the layer to its last byte (tar padding, the compressed stream's end) so its
        // digest is checked before anything of it is used.
        std::io::copy(&mut ar.into_inner(), &mut std::io::sink())
            .with_context(|| format!("reading the layer {digest}"))?;
        if !verified.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("the layer {digest} was not read to its end, so its digest is unverified: it has data after its compressed stream");
        }
        if let Some((c, k)) = &key {
            c.store(
                k,
                &ing.parts,
                &ing.nodes[first_node..],
                &whiteouts,
                &opaque,
                &notes[notes_before..],
            );
        }
        ing.marks.add(li, whiteouts, opaque);
    }
    // One small layer merged onto the tree just below it: merging it again costs less than
    // writing the whole tree (at 1M entries, 0.02 s against 0.15 s), so that tree is not
    // stored; the next image on top of it merges two layers onto the same base and stores its
    // tree, so no read starts more than two layers above a kept tree.
    let mut store = true;
    let tree = match base {
        // Large new layers: all merged again, the cached tree's nodes as one layer.
        Some(mut base) if ing.nodes.len() > base.len() / 8 => {
            base.append(&mut ing.nodes);
            super::merge::merge(ing.parts, base, &ing.marks, prefix, reference, notes)?
        }
        Some(base) => {
            store = layers.len() - done > 1;
            super::merge::onto(
                ing.parts,
                base,
                ing.nodes,
                &ing.marks,
                (prefix, reference),
                notes,
            )?
        }
        None => super::merge::merge(ing.parts, ing.nodes, &ing.marks, prefix, reference, notes)?,
    };
    // A tree whose read reported nothing is kept for the next image on top of this one. (With
    // a report, something was dropped that a layer above could bring back; directories the
    // merge added are not entries a layer above can replace: such trees are merged again.)
    if let Some(c) =
        cache.filter(|_| store && notes.len() == notes_before_all && !tree.implicit_dirs)
    {
        c.store_tree(&LayerCache::tree_key(prefix, layers), &tree);
    }
    Ok(tree)
}

/// The layers' entries as they are read, before the merge. Every layer reader adds an entry
/// through [`Ingest::add`] and a layer's whiteouts and opaque directories through
/// `marks.add(layer, whiteouts, opaque)` (paths relative to the image root, as the entries'
/// are); the layer cache loads its nodes into `parts` and `nodes` directly.
pub(super) struct Ingest<'p> {
    pub(super) parts: Parts,
    pub(super) nodes: Vec<Node>,
    pub(super) marks: Marks,
    prefix: &'p str,
}

impl<'p> Ingest<'p> {
    pub(super) fn new(prefix: &'p str) -> Ingest<'p> {
        Ingest {
            parts: Parts::default(),
            nodes: Vec::new(),
            marks: Marks::default(),
            prefix,
        }
    }

    /// Adds the entry `index` of the layer `layer` at `path` (relative to the image root, as
    /// [`normalize`] gives it; `entry.target` of a hard link the same); false when the path is
    /// neither below `image.path` nor on the way to it (then it is not kept). An error only
    /// when the tree cannot hold it (see `tree`).
    pub(super) fn add(
        &mut self,
        path: &str,
        entry: &Entry,
        layer: usize,
        index: u64,
    ) -> Result<bool> {
        let Some((stored, chain)) = place(self.prefix, path) else {
            return Ok(false);
        };
        let pos = encode_pos(layer, index) | if chain { CHAIN } else { 0 };
        let n = self.parts.node(stored, entry, pos)?;
        self.nodes.push(n);
        Ok(true)
    }
}

/// Marks a node of `image.path` itself or a directory on the way to it (its full path is
/// stored); the others are below `image.path` and store their path relative to it.
pub(super) const CHAIN: u64 = 1 << 63;

/// What of a full image path is stored, and whether it is on the way to `prefix` (then whole);
/// `None`: it is neither below `prefix` nor on the way to it, and is not kept.
pub(super) fn place<'a>(prefix: &str, p: &'a str) -> Option<(&'a str, bool)> {
    if prefix.is_empty() {
        return Some((p, false));
    }
    match p.strip_prefix(prefix) {
        Some("") => Some((p, true)),
        Some(rest) => rest.strip_prefix('/').map(|r| (r, false)),
        None => {
            (prefix.len() > p.len() && prefix.starts_with(p) && prefix.as_bytes()[p.len()] == b'/')
                .then_some((p, true))
        }
    }
}

/// Streams the content of each file in `wanted` (indices into `tree`, which [`tree`] built) to
/// `f`, in the layers' order.
pub(super) fn fetch(
    store: &Store,
    layers: &[(String, String)],
    tree: &Tree,
    max_layer_bytes: u64,
    wanted: &mut [u32],
    f: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    // The tree indices sorted in place into the order the layers hold their bytes (4 bytes a
    // file, and no second list: at a million files a copy would be the sync's largest
    // transient).
    for &i in wanted.iter() {
        if tree.kind(i as usize) != Kind::File {
            bail!("{:?} is not a file of the image", tree.path(i as usize));
        }
    }
    wanted.sort_unstable_by_key(|&i| (tree.pos(i as usize), i));
    let order = &*wanted;
    let by_pos = |k: usize| order.get(k).map(|&i| (tree.pos(i as usize), i as usize));
    let mut next = 0;
    for (li, (digest, mt)) in layers.iter().enumerate() {
        if by_pos(next).is_none_or(|(p, _)| decode_pos(p).0 != li) {
            continue;
        }
        let r = Limited::new(
            decompress(mt, store.open(digest)?)?,
            max_layer_bytes,
            digest,
        );
        let mut ar = tar::Archive::new(r);
        for (ei, e) in ar.entries()?.enumerate() {
            let mut e = e.with_context(|| format!("reading the layer {digest}"))?;
            let here = encode_pos(li, ei as u64);
            let first = next;
            while by_pos(next).is_some_and(|(p, _)| p == here) {
                next += 1;
            }
            match next - first {
                0 => {}
                1 => f(order[first] as usize, &mut e)?,
                _ => {
                    let mut buf = Vec::new();
                    e.read_to_end(&mut buf)?;
                    for &i in &order[first..next] {
                        f(i as usize, &mut &buf[..])?;
                    }
                }
            }
            if by_pos(next).is_none_or(|(p, _)| decode_pos(p).0 != li) {
                break;
            }
        }
    }
    if let Some((_, i)) = by_pos(next) {
        bail!(
            "{:?} was not found in its layer of the image; the image changed while it was read",
            tree.path(i)
        );
    }
    Ok(())
}

/// Normalises a path from a tar header: relative, no `.` or empty components; `None` when it
/// has `..` or is not UTF-8.
pub(super) fn normalize(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The layer's tar stream: `r` (the blob, checked against its digest as it is read)
/// decompressed, both in a second thread a few chunks ahead of the tar reader
/// ([`super::ahead`]), so that the blob's hash and its decompression share the work with what
/// the caller does to each entry (hash it, or write it) instead of taking turns.
fn decompress(media_type: &str, r: Box<dyn Read + Send>) -> Result<Box<dyn Read>> {
    let tar: Box<dyn Read + Send> = if media_type.ends_with("gzip") || media_type.ends_with("+gzip")
    {
        Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(1 << 16, r),
        ))
    } else if media_type.ends_with("zstd") {
        Box::new(zstd::stream::read::Decoder::new(r).context("starting zstd")?)
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar") {
        r
    } else {
        bail!("unsupported layer media type {media_type:?}")
    };
    Ok(Box::new(super::ahead::ahead(tar).context(
        "starting the thread that reads a layer blob ahead",
    )?))
}

pub(super) fn encode_pos(layer: usize, index: u64) -> u64 {
    ((layer as u64) << 40) | index
}

pub(super) fn decode_pos(p: u64) -> (usize, u64) {
    (((p & !CHAIN) >> 40) as usize, p & ((1 << 40) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_dotdot() {
        assert_eq!(normalize(b"./srv//a/./b").as_deref(), Some("srv/a/b"));
        assert_eq!(normalize(b"/srv/a").as_deref(), Some("srv/a"));
        assert!(normalize(b"srv/../../etc/passwd").is_none());
    }
}
