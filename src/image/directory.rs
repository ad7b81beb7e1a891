//! The `directory` source: a plain tree on disk (an unpacked image root), read in place. Its
//! digest is a hash over a listing of the tree (path, type, mode, size, mtime, ctime, inode,
//! symlink target), so any change to it is a new image; file contents are hashed only when
//! `sync` asks. It must never follow a symlink (every directory and file is opened from its
//! parent's fd with `O_NOFOLLOW`), never descend into another filesystem, and never write.

use super::{clean_mode, Backend, Entry, Image, Kind, Tree};
use crate::config::Config;
use crate::fsat;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Opens the directory image of `image.location` + `image.path` and scans it.
pub(super) fn open(cfg: &Config) -> Result<Image> {
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
        fd = rustix::fs::openat(&fd, comp, fsat::DIR_FLAGS, rustix::fs::Mode::empty())
            .with_context(|| {
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

/// Scans a directory image with a few threads (directories are the unit of work): its tree,
/// and the digest over the sorted listing (path, type, mode, size, mtime, ctime, inode, target).
fn scan_directory(root: BorrowedFd<'_>) -> Result<(Tree, String, Vec<String>)> {
    use std::sync::{Condvar, Mutex};
    let dev = rustix::fs::fstat(root)?.st_dev;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    // Each worker goes depth-first through its own stack of directories and hands half of it
    // to the shared queue only when another worker is idle (few wake-ups, no lock per entry).
    struct Shared {
        queue: Vec<(String, OwnedFd)>,
        idle: usize,
        done: bool,
        err: Option<anyhow::Error>,
    }
    let shared = Mutex::new(Shared {
        queue: vec![(String::new(), rustix::io::dup(root)?)],
        idle: 0,
        done: false,
        err: None,
    });
    let idle_hint = std::sync::atomic::AtomicUsize::new(0);
    let cv = Condvar::new();
    let results: Vec<(Vec<Scanned>, Vec<String>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| {
                    use std::sync::atomic::Ordering::Relaxed;
                    let mut out = Vec::new();
                    let mut bad = Vec::new();
                    let mut local: Vec<(String, OwnedFd)> = Vec::new();
                    loop {
                        let (prefix, fd) = match local.pop() {
                            Some(job) => job,
                            None => {
                                let mut g = shared.lock().unwrap();
                                loop {
                                    if g.done || g.err.is_some() {
                                        return (out, bad);
                                    }
                                    if let Some(job) = g.queue.pop() {
                                        break job;
                                    }
                                    g.idle += 1;
                                    idle_hint.store(g.idle, Relaxed);
                                    if g.idle == threads {
                                        g.done = true;
                                        cv.notify_all();
                                        return (out, bad);
                                    }
                                    g = cv.wait(g).unwrap();
                                    g.idle -= 1;
                                    idle_hint.store(g.idle, Relaxed);
                                }
                            }
                        };
                        match scan_one(fd, &prefix, dev, &mut out, &mut bad) {
                            Ok(subs) => local.extend(subs),
                            Err(e) => {
                                let mut g = shared.lock().unwrap();
                                g.err.get_or_insert(e);
                                cv.notify_all();
                                return (out, bad);
                            }
                        }
                        if idle_hint.load(Relaxed) > 0 && local.len() > 1 {
                            let give: Vec<_> = local.drain(..local.len() / 2).collect();
                            let mut g = shared.lock().unwrap();
                            g.queue.extend(give);
                            cv.notify_all();
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    if let Some(e) = shared.into_inner().unwrap().err {
        return Err(e);
    }
    let mut all: Vec<Scanned> = Vec::new();
    let mut bad = Vec::new();
    for (o, b) in results {
        all.extend(o);
        bad.extend(b);
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

/// Reads one directory: its entries into `out`, its subdirectories (opened) returned.
fn scan_one(
    fd: OwnedFd,
    prefix: &str,
    dev: u64,
    out: &mut Vec<Scanned>,
    bad: &mut Vec<String>,
) -> Result<Vec<(String, OwnedFd)>> {
    let mut rd = rustix::fs::Dir::new(fd).with_context(|| format!("reading {prefix:?}"))?;
    let mut names = Vec::new();
    for e in rd.by_ref() {
        let e = e.with_context(|| format!("reading {prefix:?}"))?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        match std::str::from_utf8(n) {
            Ok(s) => names.push(s.to_string()),
            Err(_) => bad.push(format!("{prefix}/{}", String::from_utf8_lossy(n))),
        }
    }
    let dir = rd.fd()?;
    let mut subs = Vec::new();
    for name in names {
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let Some(st) = fsat::lstat_at(dir, &name)? else {
            continue;
        };
        let kind = match fsat::file_type(&st) {
            rustix::fs::FileType::Directory => Kind::Dir,
            rustix::fs::FileType::RegularFile => Kind::File,
            rustix::fs::FileType::Symlink => Kind::Symlink,
            _ => continue,
        };
        let target = if kind == Kind::Symlink {
            let t = rustix::fs::readlinkat(dir, name.as_str(), Vec::new())?;
            Some(String::from_utf8_lossy(t.as_bytes()).into_owned())
        } else {
            None
        };
        if kind == Kind::Dir && st.st_dev == dev {
            match rustix::fs::openat(
                dir,
                name.as_str(),
                fsat::DIR_FLAGS,
                rustix::fs::Mode::empty(),
            ) {
                Ok(sub) => subs.push((rel.clone(), sub)),
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e).with_context(|| format!("opening {rel:?}")),
            }
        }
        out.push(Scanned {
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
    }
    Ok(subs)
}

/// The content hash of the file `rel` of the image rooted at `root`.
pub(super) fn hash_file(root: BorrowedFd<'_>, location: &Path, rel: &str) -> Result<[u8; 32]> {
    let mut dc = fsat::DirCache::new(rustix::io::dup(root)?);
    let mut file = open_in_directory(&mut dc, rel, location)?;
    let mut hs = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hs)?;
    Ok(*hs.finalize().as_bytes())
}

/// Streams the content of each file in `wanted` (relative paths of the tree) to `f`.
pub(super) fn fetch(
    root: BorrowedFd<'_>,
    location: &Path,
    wanted: &[String],
    f: &mut dyn FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut dc = fsat::DirCache::new(rustix::io::dup(root)?);
    for rel in wanted {
        f(rel, &mut open_in_directory(&mut dc, rel, location)?)?;
    }
    Ok(())
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
