//! The `directory` source: a plain tree on disk (an unpacked image root), read in place. Its
//! digest is a hash over a listing of the tree (path, type, mode, size, mtime, ctime, inode,
//! symlink target), so any change to it is a new image; file contents are hashed only when
//! `sync` asks. It must never follow a symlink (every directory and file is opened from its
//! parent's fd with `O_NOFOLLOW`), never descend into another filesystem, and never write.

use super::{clean_mode, Backend, Entry, Image, Kind, Tree};
use crate::config::Config;
use crate::fs::at;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// Opens the directory image of `image.location` + `image.path` and scans it.
pub(super) fn open(cfg: &Config) -> Result<Image> {
    let location = cfg.image.location.clone().unwrap_or_default();
    let mut fd = at::open_dir_path(&location).with_context(|| {
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
        fd = at::open_dir_at(fd.as_fd(), comp).with_context(|| {
            format!(
                "opening {} inside the image directory {} (image.path; a symlink is refused)",
                cfg.image.path.display(),
                location.display()
            )
        })?;
    }
    let (tree, digest, bad) = scan(fd.as_fd())
        .with_context(|| format!("reading the image directory {}", location.display()))?;
    for b in &bad {
        log::warn!("image directory: skipped {b:?}: its name is not UTF-8");
    }
    Ok(Image {
        reference: location.display().to_string(),
        digest,
        backend: Backend::Directory { root: fd, location },
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
pub(super) fn scan(root: BorrowedFd<'_>) -> Result<(Tree, String, Vec<String>)> {
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
    let tree = Tree::from_sorted(all.into_iter().map(|s| (s.rel, s.entry, 0)).collect())?;
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
        let kind = match at::file_type(&st) {
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

/// The content hash of the file `rel` of the image rooted at `root`.
pub(super) fn hash_file(root: BorrowedFd<'_>, location: &Path, rel: &str) -> Result<[u8; 32]> {
    let mut dc = at::DirCache::new(rustix::io::dup(root)?);
    let mut file = open_in_directory(&mut dc, rel, location)?;
    let mut hs = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hs)?;
    Ok(*hs.finalize().as_bytes())
}

/// Streams the content of each file in `wanted` (indices into `tree`) to `f`.
pub(super) fn fetch(
    root: BorrowedFd<'_>,
    location: &Path,
    tree: &Tree,
    wanted: &[usize],
    f: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut dc = at::DirCache::new(rustix::io::dup(root)?);
    for &i in wanted {
        f(i, &mut open_in_directory(&mut dc, tree.path(i), location)?)?;
    }
    Ok(())
}

/// Opens the file `rel` of a `directory` image for reading: one directory at a time from the
/// image root, never through a symlink.
fn open_in_directory(dc: &mut at::DirCache, rel: &str, location: &Path) -> Result<std::fs::File> {
    let (parent, name) = at::split(rel);
    let at::Opened::Dir(d) = dc.open(parent)? else {
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
