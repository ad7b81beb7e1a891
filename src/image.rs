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

use crate::config::{Config, ImageSource};
use crate::fs::at as fsat;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
        store: Store,
        layers: Vec<(String, String)>,
        prefix: String,
    },
}

/// Where blobs come from.
#[derive(Clone)]
enum Store {
    OciLayout(PathBuf),
    Containerd { address: PathBuf, namespace: String },
}

/// Finds the newest image of the configured repository.
pub fn newest(cfg: &Config) -> Result<Image> {
    match cfg.image.source {
        ImageSource::Directory => open_directory(cfg),
        _ => {
            let store = store(cfg);
            let cands = list(&store, cfg)?;
            let Some(best) = pick_newest(&cands) else {
                bail!(
                    "no image of {} found in {}; pull one (or check image.repository)",
                    cfg.image.repository,
                    store.describe()
                );
            };
            open_layered(cfg, store, best.reference.clone(), &best.digest)
        }
    }
}

/// The image with this digest, if it is still there.
pub fn by_digest(cfg: &Config, digest: &str) -> Result<Option<Image>> {
    match cfg.image.source {
        ImageSource::Directory => {
            let img = open_directory(cfg)?;
            Ok((img.digest == digest).then_some(img))
        }
        _ => {
            let store = store(cfg);
            let cands = list(&store, cfg)?;
            match cands.into_iter().find(|c| c.digest == digest) {
                Some(c) => Ok(Some(open_layered(cfg, store, c.reference, digest)?)),
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

fn store(cfg: &Config) -> Store {
    match cfg.image.source {
        ImageSource::OciLayout => Store::OciLayout(cfg.image.location.clone().unwrap_or_default()),
        _ => Store::Containerd {
            address: cfg.image.containerd_address.clone(),
            namespace: cfg.image.namespace.clone(),
        },
    }
}

impl Store {
    fn describe(&self) -> String {
        match self {
            Store::OciLayout(p) => format!("the OCI layout {}", p.display()),
            Store::Containerd { address, namespace } => format!(
                "containerd at {} (namespace {namespace})",
                address.display()
            ),
        }
    }

    fn ctr(&self) -> Command {
        let Store::Containerd { address, namespace } = self else {
            unreachable!()
        };
        let mut c = Command::new("ctr");
        c.args(["--connect-timeout", "5s"])
            .arg("--address")
            .arg(address)
            .arg("--namespace")
            .arg(namespace);
        c
    }

    /// A blob's bytes, streamed.
    fn open(&self, digest: &str) -> Result<Box<dyn Read>> {
        let (alg, hex) = check_digest(digest)?;
        match self {
            Store::OciLayout(dir) => {
                let p = dir.join("blobs").join(alg).join(hex);
                let f = std::fs::File::open(&p)
                    .with_context(|| format!("opening the blob {}", p.display()))?;
                Ok(Box::new(f))
            }
            Store::Containerd { .. } => {
                let mut cmd = self.ctr();
                cmd.args(["content", "get", digest])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = cmd
                    .spawn()
                    .context("running ctr (containerd's client; install the containerd package)")?;
                let out = child.stdout.take().context("ctr stdout")?;
                Ok(Box::new(ChildReader {
                    child,
                    out,
                    what: format!("ctr content get {digest}"),
                }))
            }
        }
    }

    fn json(&self, digest: &str) -> Result<Value> {
        let mut buf = Vec::new();
        self.open(digest)?
            .take(16 << 20)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading the blob {digest} from {}", self.describe()))?;
        serde_json::from_slice(&buf)
            .with_context(|| format!("parsing the blob {digest} from {} as JSON", self.describe()))
    }
}

/// A child's stdout that fails the read at EOF if the child failed.
struct ChildReader {
    child: std::process::Child,
    out: std::process::ChildStdout,
    what: String,
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let st = self.child.wait()?;
            if !st.success() {
                return Err(std::io::Error::other(format!(
                    "{} failed ({st}): {}",
                    self.what,
                    err.trim()
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn check_digest(d: &str) -> Result<(&str, &str)> {
    let Some((alg, hex)) = d.split_once(':') else {
        bail!("{d:?} is not a digest (algorithm:hex)");
    };
    if alg.is_empty()
        || !alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        || hex.len() < 32
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        bail!("{d:?} is not a digest (algorithm:hex)");
    }
    Ok((alg, hex))
}

/// Images of the repository in the store.
fn list(store: &Store, cfg: &Config) -> Result<Vec<Candidate>> {
    let repo = &cfg.image.repository;
    let mut out = Vec::new();
    match store {
        Store::OciLayout(dir) => {
            let p = dir.join("index.json");
            let text = std::fs::read(&p)
                .with_context(|| format!("reading the OCI layout index {}", p.display()))?;
            let index: Value = serde_json::from_slice(&text)
                .with_context(|| format!("parsing {}", p.display()))?;
            for d in index["manifests"].as_array().into_iter().flatten() {
                let Some(name) = d["annotations"]["org.opencontainers.image.ref.name"].as_str()
                else {
                    continue;
                };
                // A bare tag names an image of the layout (umoci and skopeo write those);
                // a full reference must be of the repository.
                let tag = match name.rsplit_once(':') {
                    Some((r, t)) if r == repo => t,
                    Some((r, _)) if r.contains('/') || !r.is_empty() => continue,
                    _ => name,
                };
                if tag.contains('/') {
                    continue;
                }
                let Some(digest) = d["digest"].as_str() else {
                    continue;
                };
                out.push(Candidate {
                    reference: format!("{repo}:{tag}"),
                    tag: tag.to_string(),
                    digest: digest.to_string(),
                    created: None,
                });
            }
        }
        Store::Containerd { .. } => {
            let o = store
                .ctr()
                .args(["images", "ls"])
                .stdin(Stdio::null())
                .output()
                .context("running `ctr images ls` (install the containerd package)")?;
            if !o.status.success() {
                bail!(
                    "listing images in {}: ctr images ls failed: {}; check that containerd runs \
                     and that image.containerd_address is its socket",
                    store.describe(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            // Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS; none of the first three has spaces.
            for line in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
                let mut f = line.split_whitespace();
                let (Some(reference), Some(_ty), Some(digest)) = (f.next(), f.next(), f.next())
                else {
                    continue;
                };
                let Some(tag) = reference
                    .strip_prefix(repo.as_str())
                    .and_then(|r| r.strip_prefix(':'))
                else {
                    continue;
                };
                if tag.contains('/') || tag.contains('@') {
                    continue;
                }
                out.push(Candidate {
                    reference: reference.to_string(),
                    tag: tag.to_string(),
                    digest: digest.to_string(),
                    created: None,
                });
            }
        }
    }
    // Creation time only matters for tags that do not say when they were published.
    for c in &mut out {
        if parse_publish_tag(&c.tag).is_none() {
            c.created = manifest_for(store, &c.digest)
                .and_then(|m| {
                    let cfgd = m["config"]["digest"]
                        .as_str()
                        .context("no config")?
                        .to_string();
                    store.json(&cfgd)
                })
                .ok()
                .and_then(|conf| {
                    conf["created"]
                        .as_str()
                        .and_then(|s| humantime::parse_rfc3339_weak(s.get(..19)?).ok())
                })
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
        }
    }
    Ok(out)
}

/// The image manifest for `digest`, descending an index to this machine's platform.
fn manifest_for(store: &Store, digest: &str) -> Result<Value> {
    let mut v = store.json(digest)?;
    for _ in 0..4 {
        if v["manifests"].is_array() {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            };
            let ms = v["manifests"].as_array().cloned().unwrap_or_default();
            let pick = ms
                .iter()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
                .or_else(|| (ms.len() == 1).then(|| &ms[0]))
                .with_context(|| format!("the index {digest} has no manifest for linux/{arch}"))?;
            let d = pick["digest"]
                .as_str()
                .context("a manifest without a digest")?;
            v = store.json(d)?;
        } else {
            return Ok(v);
        }
    }
    bail!("the index {digest} nests too deep")
}

fn open_layered(cfg: &Config, store: Store, reference: String, digest: &str) -> Result<Image> {
    let m = manifest_for(&store, digest)
        .with_context(|| format!("reading the manifest of {reference}"))?;
    let mut layers = Vec::new();
    for l in m["layers"].as_array().into_iter().flatten() {
        let d = l["digest"].as_str().context("a layer without a digest")?;
        let mt = l["mediaType"].as_str().unwrap_or("").to_string();
        layers.push((d.to_string(), mt));
    }
    let prefix = cfg
        .image
        .path
        .to_string_lossy()
        .trim_matches('/')
        .to_string();
    Ok(Image {
        reference,
        digest: digest.to_string(),
        backend: Backend::Layers {
            store,
            layers,
            prefix,
        },
        winners: HashMap::new(),
        tree_cache: None,
    })
}

fn open_directory(cfg: &Config) -> Result<Image> {
    let location = cfg.image.location.clone().unwrap_or_default();
    let mut fd = fsat::open_dir_path(&location).with_context(|| {
        format!(
            "opening the image directory {} (image.location)",
            location.display()
        )
    })?;
    let inner = cfg
        .image
        .path
        .to_string_lossy()
        .trim_matches('/')
        .to_string();
    for comp in inner.split('/').filter(|c| !c.is_empty()) {
        fd = fsat::open_dir_at(fd.as_fd(), comp).with_context(|| {
            format!(
                "opening {} inside the image directory {} (image.path; a symlink is refused)",
                cfg.image.path.display(),
                location.display()
            )
        })?;
    }
    let (tree, digest, bad) = scan_directory(fd.as_fd())
        .with_context(|| format!("reading the image directory {}", location.display()))?;
    for b in &bad {
        log::warn!("image directory: skipped {b:?}: its name is not UTF-8");
    }
    Ok(Image {
        reference: location.display().to_string(),
        digest,
        backend: Backend::Directory { root: fd, location },
        winners: HashMap::new(),
        tree_cache: Some(tree),
    })
}

/// One scanned entry of a directory image, with what the digest also covers.
struct Scanned {
    rel: String,
    entry: Entry,
    ctime: (i64, i64),
    ino: u64,
}

/// Scans a directory image with a few threads (the shared walker, one visitor per thread): its
/// tree, and the digest over the sorted listing (path, type, mode, size, mtime, ctime, inode,
/// target).
fn scan_directory(root: BorrowedFd<'_>) -> Result<(Tree, String, Vec<String>)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let walk = crate::fs::walk::Walk {
        threads,
        ..Default::default()
    };
    let workers = walk.parallel(root, "", ScanVisitor::default)?;
    let mut all: Vec<Scanned> = Vec::new();
    let mut bad = Vec::new();
    for w in workers {
        all.extend(w.out);
        bad.extend(w.bad);
    }
    all.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    let mut listing = blake3::Hasher::new();
    let mut line = String::new();
    for s in &all {
        use std::fmt::Write as _;
        line.clear();
        let e = &s.entry;
        let _ = writeln!(
            line,
            "{}\0{}\0{:o}\0{}\0{}.{}\0{}.{}\0{}\0{}",
            s.rel,
            e.kind.letter(),
            e.mode,
            e.size,
            e.mtime,
            e.mtime_nsec,
            s.ctime.0,
            s.ctime.1,
            s.ino,
            e.target.as_deref().unwrap_or("")
        );
        listing.update(line.as_bytes());
    }
    let digest = format!("blake3:{}", listing.finalize().to_hex());
    let tree: Tree = all.into_iter().map(|s| (s.rel, s.entry)).collect();
    Ok((tree, digest, bad))
}

/// One thread's part of a directory image scan.
#[derive(Default)]
struct ScanVisitor {
    out: Vec<Scanned>,
    bad: Vec<String>,
}

impl crate::fs::walk::Visitor for ScanVisitor {
    fn entry(&mut self, e: &crate::fs::walk::Entry<'_>) -> Result<bool> {
        let Some(rel) = e.rel_utf8() else {
            self.bad.push(e.rel());
            return Ok(false);
        };
        let Some(st) = e.lstat().with_context(|| format!("lstat {rel:?}"))? else {
            return Ok(false);
        };
        let kind = match fsat::file_type(&st) {
            rustix::fs::FileType::Directory => Kind::Dir,
            rustix::fs::FileType::RegularFile => Kind::File,
            rustix::fs::FileType::Symlink => Kind::Symlink,
            _ => return Ok(false),
        };
        let target = if kind == Kind::Symlink {
            let t = rustix::fs::readlinkat(e.dir, e.name, Vec::new())
                .with_context(|| format!("reading the symlink {rel:?}"))?;
            Some(String::from_utf8_lossy(t.as_bytes()).into_owned())
        } else {
            None
        };
        self.out.push(Scanned {
            entry: Entry {
                kind,
                mode: clean_mode(kind, st.st_mode),
                size: if kind == Kind::File {
                    st.st_size as u64
                } else {
                    0
                },
                mtime: st.st_mtime,
                mtime_nsec: st.st_mtime_nsec as u32,
                hash: None,
                target,
            },
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
            ino: st.st_ino,
            rel,
        });
        Ok(kind == Kind::Dir)
    }
}

/// Permission bits as we will write them: setuid/setgid dropped from files.
fn clean_mode(kind: Kind, raw: u32) -> u32 {
    match kind {
        Kind::File => raw & 0o1777,
        Kind::Dir => raw & 0o7777,
        Kind::Symlink => 0o777,
    }
}

/// Normalises a path from a tar header: relative, no `.` or empty components; `None` when it
/// has `..` or is not UTF-8.
fn normalize(raw: &[u8]) -> Option<String> {
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

fn decompress(media_type: &str, r: Box<dyn Read>) -> Result<Box<dyn Read>> {
    if media_type.ends_with("gzip") || media_type.ends_with("+gzip") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(1 << 16, r),
        )))
    } else if media_type.ends_with("zstd") {
        Ok(Box::new(
            zstd::stream::read::Decoder::new(r).context("starting zstd")?,
        ))
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar") {
        Ok(r)
    } else {
        bail!("unsupported layer media type {media_type:?}")
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
        // Full image path -> (entry, layer, index). Only entries under `prefix` are hashed.
        let mut merged: BTreeMap<String, (Entry, usize, u64)> = BTreeMap::new();
        let under =
            |p: &str| prefix.is_empty() || p == prefix || p.starts_with(&format!("{prefix}/"));
        for (li, (digest, mt)) in layers.iter().enumerate() {
            let r = decompress(mt, store.open(digest)?)?;
            let mut ar = tar::Archive::new(r);
            let mut adds: Vec<(String, Entry, u64)> = Vec::new();
            let mut whiteouts = Vec::new();
            let mut opaque = Vec::new();
            let entries = ar
                .entries()
                .with_context(|| format!("reading the layer {digest}"))?;
            for (ei, e) in entries.enumerate() {
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
                let (parent, name) = fsat::split(&path);
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
                    // Same content as an earlier entry: copy that entry (as a separate file).
                    let t = e.link_name_bytes().and_then(|b| normalize(&b));
                    let src = t.and_then(|t| {
                        adds.iter()
                            .rev()
                            .find(|a| a.0 == t)
                            .map(|a| (a.1.clone(), a.2))
                            .or_else(|| {
                                merged
                                    .get(&t)
                                    .map(|(e, l, i)| (e.clone(), encode_pos(*l, *i)))
                            })
                    });
                    match src {
                        Some((src, pos))
                            if src.kind == Kind::File && (src.hash.is_some() || !under(&path)) =>
                        {
                            adds.push((path, Entry { mtime, ..src }, pos));
                        }
                        _ => notes.push(format!(
                            "image: dropped the hard link {path:?}: its target is not a file of the tree"
                        )),
                    }
                    continue;
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
                adds.push((path, entry, encode_pos(li, ei as u64)));
            }
            // Whiteouts hide what the lower layers had; this layer's own entries stay.
            for d in opaque {
                remove_below(&mut merged, &d, false);
            }
            for w in whiteouts {
                remove_below(&mut merged, &w, true);
            }
            for (path, entry, pos) in adds {
                if entry.kind != Kind::Dir {
                    remove_below(&mut merged, &path, false);
                }
                let (l, i) = decode_pos(pos);
                merged.insert(path, (entry, l, i));
            }
        }
        // The tree root must be a real directory all the way down in the image.
        if !prefix.is_empty() {
            let mut acc = String::new();
            for c in prefix.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(c);
                if let Some((e, _, _)) = merged.get(&acc) {
                    if e.kind != Kind::Dir {
                        bail!(
                            "in the image {}, /{acc} is not a directory (a {}); image.path must be a directory of the image",
                            self.reference,
                            if e.kind == Kind::Symlink { "symlink" } else { "file" }
                        );
                    }
                }
            }
        }
        let mut tree = Tree::new();
        let start = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        for (full, (entry, l, i)) in merged.range(start.clone()..) {
            if !full.starts_with(&start) {
                break;
            }
            let rel = &full[start.len()..];
            // Every ancestor inside the tree must be a directory of the image.
            let mut ok = true;
            let mut anc = rel;
            while let Some(idx) = anc.rfind('/') {
                anc = &anc[..idx];
                match tree.get(anc) {
                    Some(e) if e.kind == Kind::Dir => break,
                    Some(_) => {
                        ok = false;
                        break;
                    }
                    None => match merged.get(&format!("{start}{anc}")) {
                        Some((e, _, _)) if e.kind != Kind::Dir => {
                            ok = false;
                            break;
                        }
                        _ => {
                            tree.insert(
                                anc.to_string(),
                                Entry {
                                    kind: Kind::Dir,
                                    mode: 0o755,
                                    size: 0,
                                    mtime: 0,
                                    mtime_nsec: 0,
                                    hash: None,
                                    target: None,
                                },
                            );
                        }
                    },
                }
            }
            if !ok {
                notes.push(format!(
                    "image: dropped {rel:?}: a parent of it is a symlink or a file in the image"
                ));
                continue;
            }
            if entry.kind == Kind::File {
                self.winners.insert(rel.to_string(), (*l, *i));
            }
            tree.insert(rel.to_string(), entry.clone());
        }
        Ok(tree)
    }

    /// The content hash of a file of the tree (the `directory` source hashes on demand).
    pub fn hash_file(&self, rel: &str) -> Result<[u8; 32]> {
        let Backend::Directory { root, location } = &self.backend else {
            bail!("hash_file is only needed for directory images")
        };
        let mut dc = fsat::DirCache::new(rustix::io::dup(root)?);
        let mut file = open_in_directory(&mut dc, rel, location)?;
        let mut hs = blake3::Hasher::new();
        std::io::copy(&mut file, &mut hs)?;
        Ok(*hs.finalize().as_bytes())
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
                let mut dc = fsat::DirCache::new(rustix::io::dup(root)?);
                for rel in wanted {
                    f(rel, &mut open_in_directory(&mut dc, rel, location)?)?;
                }
                Ok(())
            }
            Backend::Layers { store, layers, .. } => {
                // (layer, index) -> paths that take their bytes from there.
                let mut by_pos: BTreeMap<(usize, u64), Vec<&str>> = BTreeMap::new();
                for rel in wanted {
                    let pos = self
                        .winners
                        .get(rel)
                        .with_context(|| format!("{rel:?} is not a file of the image"))?;
                    by_pos.entry(*pos).or_default().push(rel);
                }
                for (li, (digest, mt)) in layers.iter().enumerate() {
                    if by_pos.range((li, 0)..=(li, u64::MAX)).next().is_none() {
                        continue;
                    }
                    let mut ar = tar::Archive::new(decompress(mt, store.open(digest)?)?);
                    for (ei, e) in ar.entries()?.enumerate() {
                        let mut e = e.with_context(|| format!("reading the layer {digest}"))?;
                        let Some(paths) = by_pos.get(&(li, ei as u64)) else {
                            continue;
                        };
                        if paths.len() == 1 {
                            f(paths[0], &mut e)?;
                        } else {
                            let mut buf = Vec::new();
                            e.read_to_end(&mut buf)?;
                            for p in paths {
                                f(p, &mut &buf[..])?;
                            }
                        }
                    }
                }
                Ok(())
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

fn encode_pos(layer: usize, index: u64) -> u64 {
    ((layer as u64) << 40) | index
}

fn decode_pos(p: u64) -> (usize, u64) {
    ((p >> 40) as usize, p & ((1 << 40) - 1))
}

fn remove_below<V>(m: &mut BTreeMap<String, V>, path: &str, and_self: bool) {
    if and_self {
        m.remove(path);
    }
    let start = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let keys: Vec<String> = m
        .range(start.clone()..)
        .take_while(|(k, _)| k.starts_with(&start))
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        m.remove(&k);
    }
}

/// For messages: the path of a tree entry in the image.
pub fn image_path(cfg: &Config, rel: &str) -> PathBuf {
    Path::new(&cfg.image.path).join(rel)
}

/// Opens the file `rel` of a `directory` image for reading: one directory at a time from the
/// image root, never through a symlink.
fn open_in_directory(dc: &mut fsat::DirCache, rel: &str, location: &Path) -> Result<std::fs::File> {
    let (parent, name) = fsat::split(rel);
    let fsat::Opened::Dir(d) = dc.open(parent)? else {
        bail!(
            "{rel:?} vanished from the image directory {}",
            location.display()
        );
    };
    let fd = rustix::fs::openat(
        d,
        name,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| {
        format!(
            "opening {rel:?} in the image directory {}",
            location.display()
        )
    })?;
    Ok(std::fs::File::from(fd))
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

    #[test]
    fn normalize_refuses_dotdot() {
        assert_eq!(normalize(b"./srv//a/./b").as_deref(), Some("srv/a/b"));
        assert_eq!(normalize(b"/srv/a").as_deref(), Some("srv/a"));
        assert!(normalize(b"srv/../../etc/passwd").is_none());
    }
}
