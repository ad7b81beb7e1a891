//! Image sources: find the newest image of the configured repository and read the code tree
//! (`image.path`) out of it, without trusting anything the image holds.
//!
//! Three sources, one shape ([`Image`]: a reference, a digest, a [`Tree`] of entries and a way
//! to stream file contents):
//!
//! * `containerd`: lists images and reads manifests, configs and layer blobs through
//!   containerd's gRPC API on its socket, under a lease. The layers are read as tar
//!   streams (plain, gzip or zstd) and merged in memory, applying whiteouts; or (`image.read`)
//!   from the snapshots containerd unpacked, each layer's directory read in place through a
//!   read-only view, merged the same way. Nothing is mounted, so there is nothing to unmount
//!   when a run dies.
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
//! `oci` the OCI format (blob store, index, manifest, config), `containerd` the gRPC
//! client (images, content, leases, CRI pulls, events), `layers` the tar reading and its hostile-entry filter (each blob read a few chunks ahead in a second thread, `ahead`), `snapshots` the unpacked snapshots' reading, `merge` the layers' merge
//! into the tree, `layer_cache` what each layer chain gave (and the merged trees, `tree::file`), `tree` the compact tree,
//! `directory` the plain-tree source. Nothing here writes to the code tree, mounts or unpacks anything, or runs a shell.

use crate::config::{Config, ImageSource};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

mod ahead;
mod containerd;
mod directory;
mod layer_cache;
mod layers;
mod merge;
mod oci;
pub mod release;
mod snapshots;
pub mod tag;
mod tree;
mod verify;

pub use containerd::{watch as watch_events, Event as ImageEvent};
pub use tag::parse_publish_tag;
pub use tree::Tree;

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
    /// The directory source computes the tree to compute the digest; kept here until asked.
    tree_cache: Option<Tree>,
    /// Whether a tree read from snapshots hashes every file (see [`Image::defer_hashes`]).
    hash_on_read: bool,
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
        /// `image.max_layer_bytes`: the most one layer may unpack to.
        max_layer_bytes: u64,
        /// `image.max_layer_entries`: the most entries one layer may hold.
        max_layer_entries: u64,
        /// What each layer chain contributed, in `state_dir/layers` (`None`: off).
        cache: Option<layer_cache::LayerCache>,
        /// How to choose between the blobs and the snapshots (`image.read`).
        plan: Box<snapshots::Plan>,
        /// The snapshots containerd unpacked, once the tree was read from them.
        view: Option<Box<snapshots::View>>,
    },
}

/// Finds the newest image of the configured repository.
pub fn newest(cfg: &Config) -> Result<Image> {
    match cfg.image.source {
        ImageSource::Directory => directory::open(cfg),
        _ => {
            let store = oci::store(cfg)?;
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

/// The image the node's code follows, as far as the node has it.
pub enum Wanted {
    /// Here, opened; with the release file that named it, if one did.
    Present(Box<Image>, Option<release::Release>),
    /// The release file names an image the node does not have (and it was not pulled).
    Missing(release::Release),
}

/// The image the code follows: the one `image.release_file` names (pulled through containerd
/// first when it is missing and `pull` is true), else the newest. A pull happens before
/// anything else, so a failed one leaves the tree as it was.
pub fn wanted(cfg: &Config, pull: bool) -> Result<Wanted> {
    let Some(rel) = release::configured(cfg)? else {
        return Ok(Wanted::Present(Box::new(newest(cfg)?), None));
    };
    let repo = &cfg.image.repository;
    if rel
        .reference
        .strip_prefix(repo.as_str())
        .and_then(|r| r.strip_prefix(':'))
        .is_none()
    {
        bail!(
            "the release values file {} names {}, which is not an image of image.repository \
             ({repo}); set image.repository to its repository, or check image.release_key",
            rel.file.display(),
            rel.reference
        );
    }
    if cfg.image.source == ImageSource::Directory {
        bail!(
            "image.release_file names an image, but image.source is directory, which has no \
             images to choose from; use the containerd (or oci-layout) source"
        );
    }
    let store = oci::store(cfg)?;
    let find = |store: &oci::Store| -> Result<Option<Candidate>> {
        Ok(oci::list(store, cfg)?
            .into_iter()
            .find(|c| c.reference == rel.reference))
    };
    let found = match find(&store)? {
        Some(c) => Some(c),
        None if pull && cfg.image.pull => match &store {
            oci::Store::Containerd(client) => {
                client.pull(
                    &rel.reference,
                    std::time::Duration::from_secs(cfg.image.pull_timeout_seconds),
                )?;
                Some(find(&store)?.with_context(|| {
                    format!(
                        "{} was pulled but containerd does not list it under that name",
                        rel.reference
                    )
                })?)
            }
            oci::Store::OciLayout(_) => None,
        },
        None => None,
    };
    match found {
        Some(c) => {
            let img = oci::open_layered(cfg, store, c.reference, &c.digest)?;
            Ok(Wanted::Present(Box::new(img), Some(rel)))
        }
        None => Ok(Wanted::Missing(rel)),
    }
}

/// Like [`wanted`], but an image that is missing is an error that says what to do.
pub fn wanted_present(cfg: &Config, pull: bool) -> Result<(Image, Option<release::Release>)> {
    match wanted(cfg, pull)? {
        Wanted::Present(img, rel) => Ok((*img, rel)),
        Wanted::Missing(rel) => {
            let how = if cfg.image.source != ImageSource::Containerd {
                "pulling works only with image.source containerd; put it in the image store"
            } else if !cfg.image.pull {
                "image.pull is false, so it is not pulled; pull it (crictl pull) or set image.pull: true"
            } else {
                "a sync pulls it"
            };
            bail!(
                "the release values file {} names {}, which is not on this node ({}); {how}; \
                 the tree was left as it is",
                rel.file.display(),
                rel.reference,
                oci::store(cfg)?.describe()
            )
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
            let store = oci::store(cfg)?;
            let cands = oci::list(&store, cfg)?;
            match cands.into_iter().find(|c| c.digest == digest) {
                Some(c) => Ok(Some(oci::open_layered(cfg, store, c.reference, digest)?)),
                None => Ok(None),
            }
        }
    }
}

/// The newest candidate (see [`tag`] for the order: the publish tag's date-time, else the
/// image's creation time).
pub fn pick_newest(cands: &[Candidate]) -> Option<&Candidate> {
    cands.iter().max_by(|a, b| tag::newer(a, b))
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
        if let Some(t) = self.tree_cache.take() {
            return Ok(t);
        }
        if let Backend::Layers {
            store,
            layers,
            prefix,
            plan,
            view,
            cache,
            ..
        } = &mut self.backend
        {
            // Chosen when the tree is read, so an unchanged image costs no view. With `auto`,
            // the layer cache comes first: when it holds the image's lower layers, only the
            // new ones are read (from their blobs, a few files); when it is empty (the node's
            // first layered read) the blobs fill it, and a cold first sync is faster from them.
            let cached = cache.as_ref().and_then(|c| {
                if c.is_empty() {
                    return Some("the layer cache is empty (a first read)".to_string());
                }
                (1..=layers.len())
                    .rev()
                    .find(|&n| {
                        use layer_cache::LayerCache;
                        c.has(&LayerCache::tree_key(prefix, &layers[..n]))
                            || c.has(&LayerCache::key(prefix, &layers[..n]))
                    })
                    .map(|n| format!("the layer cache holds {n} of its {} layers", layers.len()))
            });
            *view = match cached {
                Some(why) if plan.read == crate::config::ImageRead::Auto => {
                    log::debug!("reading {} from its layer blobs: {why}", self.reference);
                    None
                }
                _ => snapshots::choose(plan, store, prefix, &self.reference)?.map(Box::new),
            };
        }
        let Backend::Layers {
            store,
            layers,
            prefix,
            max_layer_bytes,
            max_layer_entries,
            cache,
            view,
            ..
        } = &self.backend
        else {
            let Backend::Directory { root, .. } = &self.backend else {
                unreachable!()
            };
            return Ok(directory::scan(root.as_fd())?.0);
        };
        if let Some(v) = view {
            let tree = snapshots::tree(
                v,
                prefix,
                &self.reference,
                (*max_layer_entries, self.hash_on_read),
                notes,
            )?;
            tree.log_size();
            return Ok(tree);
        }
        let tree = layers::tree(
            store,
            layers,
            prefix,
            &self.reference,
            (
                layers::Limits {
                    max_bytes: *max_layer_bytes,
                    max_entries: *max_layer_entries,
                },
                cache.as_ref(),
            ),
            notes,
        )?;
        tree.log_size();
        Ok(tree)
    }

    /// Lets a tree read from snapshots carry no file hashes: the caller hashes each file as
    /// it writes it and asks [`Image::hash_file`] for any other (a first sync into an empty
    /// tree, with no manifest to compare with). The read then opens no file: each is read
    /// once, when it is written. Blobs are hashed as they stream by, whatever this says.
    pub fn defer_hashes(&mut self) {
        self.hash_on_read = false;
    }

    /// Whether files of the tree may come without a hash (the `directory` source, and
    /// snapshots after [`Image::defer_hashes`]): a sync then hashes what it writes.
    pub fn lazy_hashes(&self) -> bool {
        match &self.backend {
            Backend::Directory { .. } => true,
            Backend::Layers { view, .. } => view.is_some() && !self.hash_on_read,
        }
    }

    /// The content hash of the file `rel` of `tree` (this image's), for a file whose tree
    /// entry has none (see [`Image::lazy_hashes`]).
    pub fn hash_file(&self, tree: &Tree, rel: &str) -> Result<[u8; 32]> {
        match &self.backend {
            Backend::Directory { root, location } => {
                directory::hash_file(root.as_fd(), location, rel)
            }
            Backend::Layers {
                view: Some(v),
                prefix,
                ..
            } => {
                let Some(i) = tree.find(rel) else {
                    bail!("{rel:?} is not in the tree of {}", self.reference)
                };
                snapshots::hash_one(v, prefix, tree, i)
            }
            Backend::Layers { .. } => {
                bail!(
                    "{rel:?} has no hash in the tree of {}, read from its blobs (a bug)",
                    self.reference
                )
            }
        }
    }

    /// Streams the content of each file in `wanted` (indices into `tree`, this image's tree,
    /// 4 bytes each; reordered in place, so a million files need no second list)
    /// to `f`, with its index. For layered images the order is the layers' order, not the
    /// paths'.
    pub fn fetch(
        &self,
        tree: &Tree,
        wanted: &mut [u32],
        f: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        match &self.backend {
            Backend::Directory { root, location } => {
                directory::fetch(root.as_fd(), location, tree, wanted, f)
            }
            Backend::Layers {
                view: Some(v),
                prefix,
                ..
            } => snapshots::fetch(v, prefix, tree, wanted, f),
            Backend::Layers {
                store,
                layers,
                max_layer_bytes,
                ..
            } => layers::fetch(store, layers, tree, *max_layer_bytes, wanted, f),
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
