//! Image sources: find the newest image of the configured repository and read the code tree
//! (`image.path`) out of it, without trusting anything the image holds.
//!
//! Three sources, one shape ([`Image`]: a reference, a digest, a [`Tree`] of entries and a way
//! to stream file contents):
//!
//! * `containerd`: lists images with `ctr images ls` and reads manifests, configs and layer blobs
//!   with `ctr content get` (containerd's own API, over its socket). The layers are read as tar
//!   streams (plain, gzip or zstd) and merged in memory, applying whiteouts; nothing is mounted,
//!   so there is nothing to unmount when a run dies, and no snapshotter is needed.
//! * `oci-layout`: the same, from a directory in OCI image layout.
//! * `directory`: a plain tree (an unpacked image root); its digest is a hash over a listing of
//!   the tree (path, type, mode, size, mtime, ctime, inode, symlink target).
//!
//! Layer entries are only data: a path with `..`, a whiteout, an entry below a symlink or a hard
//! link pointing outside the tree is dropped (and reported) here, and the writer in `sync` never
//! follows a symlink anyway.
//!
//! This folder: `mod.rs` holds the shape every source gives ([`Image`], [`Entry`], [`Tree`]),
//! the choice of the newest candidate (publish tags first) and the dispatch over sources;
//! `oci` the OCI format (blob store, index, manifest, config), `containerd` the `ctr`
//! subprocess, `layers` the tar merge and its hostile-entry filter, `directory` the plain-tree
//! source. Nothing here writes to the code tree, mounts or unpacks anything, or runs a shell.

use crate::config::{Config, ImageSource};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

mod containerd;
mod directory;
mod layers;
mod oci;

/// What an image entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

impl Kind {
    pub fn letter(self) -> char {
        match self {
            Kind::Dir => 'd',
            Kind::File => 'f',
            Kind::Symlink => 'l',
        }
    }
    pub fn from_letter(c: &str) -> Option<Kind> {
        match c {
            "d" => Some(Kind::Dir),
            "f" => Some(Kind::File),
            "l" => Some(Kind::Symlink),
            _ => None,
        }
    }
}

/// One entry of the code tree in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits (setuid and setgid are dropped from files).
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// BLAKE3 of the content (files). `None` until computed (the `directory` source hashes
    /// lazily, only what it needs).
    pub hash: Option<[u8; 32]>,
    /// Symlink target.
    pub target: Option<String>,
}

/// The code tree: relative path (`/`-separated, no leading `/`) to entry, parents first.
pub type Tree = BTreeMap<String, Entry>;

/// A candidate image: its reference, digest and creation time.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub reference: String,
    pub tag: String,
    /// Digest of what the reference points at (manifest or index).
    pub digest: String,
    pub created: Option<i64>,
}

/// The chosen image.
pub struct Image {
    pub reference: String,
    pub digest: String,
    backend: Backend,
    /// For layered images, where each tree file's content is: (layer, entry index in the tar).
    winners: HashMap<String, (usize, u64)>,
    /// The directory source computes the tree to compute the digest; kept here.
    tree_cache: Option<Tree>,
}

enum Backend {
    Directory {
        /// The tree (`location` + `image.path`) opened.
        root: OwnedFd,
        location: PathBuf,
    },
    Layers {
        store: oci::Store,
        layers: Vec<(String, String)>,
        prefix: String,
    },
}

/// Finds the newest image of the configured repository.
pub fn newest(cfg: &Config) -> Result<Image> {
    match cfg.image.source {
        ImageSource::Directory => directory::open(cfg),
        _ => {
            let store = oci::store(cfg);
            let cands = oci::list(&store, cfg)?;
            let Some(best) = pick_newest(&cands) else {
                bail!(
                    "no image of {} found in {}; pull one (or check image.repository)",
                    cfg.image.repository,
                    store.describe()
                );
            };
            oci::open_layered(cfg, store, best.reference.clone(), &best.digest)
        }
    }
}

/// The image with this digest, if it is still there.
pub fn by_digest(cfg: &Config, digest: &str) -> Result<Option<Image>> {
    match cfg.image.source {
        ImageSource::Directory => {
            let img = directory::open(cfg)?;
            Ok((img.digest == digest).then_some(img))
        }
        _ => {
            let store = oci::store(cfg);
            let cands = oci::list(&store, cfg)?;
            match cands.into_iter().find(|c| c.digest == digest) {
                Some(c) => Ok(Some(oci::open_layered(cfg, store, c.reference, digest)?)),
                None => Ok(None),
            }
        }
    }
}

/// The newest candidate: tags `YYYY-MM-DD-HHMMSS-publish-N` by their date-time (UTC), then N;
/// other tags by the image's creation time. Ties: the larger reference.
pub fn pick_newest(cands: &[Candidate]) -> Option<&Candidate> {
    cands.iter().max_by(|a, b| order_key(a).cmp(&order_key(b)))
}

fn order_key(c: &Candidate) -> (i64, u64, String) {
    match parse_publish_tag(&c.tag) {
        Some((t, n)) => (t, n, c.reference.clone()),
        None => (c.created.unwrap_or(i64::MIN), 0, c.reference.clone()),
    }
}

/// `2026-11-20-101010-publish-3` -> (Unix time of 2026-11-20T10:10:10Z, 3).
pub fn parse_publish_tag(tag: &str) -> Option<(i64, u64)> {
    let (dt, n) = tag.split_once("-publish-")?;
    let n: u64 = n
        .parse()
        .ok()
        .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))?;
    let b = dt.as_bytes();
    if b.len() != 17 || b[4] != b'-' || b[7] != b'-' || b[10] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &dt[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let rfc = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        digits(0..4)?,
        digits(5..7)?,
        digits(8..10)?,
        digits(11..13)?,
        digits(13..15)?,
        digits(15..17)?
    );
    let t = humantime::parse_rfc3339(&rfc).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some((secs, n))
}

/// Permission bits as we will write them: setuid/setgid dropped from files.
fn clean_mode(kind: Kind, raw: u32) -> u32 {
    match kind {
        Kind::File => raw & 0o1777,
        Kind::Dir => raw & 0o7777,
        Kind::Symlink => 0o777,
    }
}

impl Image {
    /// The code tree. Report lines for anything dropped go to `notes`.
    pub fn tree(&mut self, notes: &mut Vec<String>) -> Result<Tree> {
        if let Some(t) = &self.tree_cache {
            return Ok(t.clone());
        }
        let Backend::Layers {
            store,
            layers,
            prefix,
        } = &self.backend
        else {
            unreachable!("directory images carry their tree")
        };
        layers::tree(
            store,
            layers,
            prefix,
            &self.reference,
            &mut self.winners,
            notes,
        )
    }

    /// The content hash of a file of the tree (the `directory` source hashes on demand).
    pub fn hash_file(&self, rel: &str) -> Result<[u8; 32]> {
        let Backend::Directory { root, location } = &self.backend else {
            bail!("hash_file is only needed for directory images")
        };
        directory::hash_file(root.as_fd(), location, rel)
    }

    /// Streams the content of each file in `wanted` (relative paths of the tree) to `f`.
    /// For layered images the order is the layers' order, not the paths'.
    pub fn fetch(
        &self,
        wanted: &[String],
        f: &mut dyn FnMut(&str, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        match &self.backend {
            Backend::Directory { root, location } => {
                directory::fetch(root.as_fd(), location, wanted, f)
            }
            Backend::Layers { store, layers, .. } => {
                layers::fetch(store, layers, &self.winners, wanted, f)
            }
        }
    }

    /// Where the image lives, for messages.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Directory { location, .. } => location.display().to_string(),
            Backend::Layers { store, .. } => store.describe(),
        }
    }
}

/// For messages: the path of a tree entry in the image.
pub fn image_path(cfg: &Config, rel: &str) -> PathBuf {
    Path::new(&cfg.image.path).join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(tag: &str, created: Option<i64>) -> Candidate {
        Candidate {
            reference: format!("r:{tag}"),
            tag: tag.into(),
            digest: String::new(),
            created,
        }
    }

    #[test]
    fn publish_tags_order_by_time_then_number() {
        let c = vec![
            cand("2026-11-20-101010-publish-9", None),
            cand("2026-11-20-101010-publish-10", None),
            cand("2026-11-19-235959-publish-99", None),
        ];
        assert_eq!(pick_newest(&c).unwrap().tag, "2026-11-20-101010-publish-10");
    }

    #[test]
    fn other_tags_order_by_creation_time() {
        let t = parse_publish_tag("2026-11-20-101010-publish-1").unwrap().0;
        let c = vec![
            cand("2026-11-20-101010-publish-1", None),
            cand("latest", Some(t + 60)),
            cand("old", Some(t - 60)),
        ];
        assert_eq!(pick_newest(&c).unwrap().tag, "latest");
        assert!(parse_publish_tag("2026-13-20-101010-publish-1").is_none());
        assert!(parse_publish_tag("2026-11-20-101010-publish-x").is_none());
    }
}
