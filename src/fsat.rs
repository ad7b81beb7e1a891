//! Directory-fd-relative file system access for trees that other people can write.
//!
//! `/srv/mediawiki` is writable by engineers, so any path string resolved by the kernel from the
//! top could run through a symlink they planted. Everything here goes one component at a time
//! from an open directory fd, with `O_NOFOLLOW|O_DIRECTORY`; a component that is a symlink or not
//! a directory stops the walk and is reported to the caller, who skips that subtree.

use rustix::fs::{openat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Flags for opening a directory without ever following a symlink.
pub const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens an absolute directory path given by the administrator (the configuration), refusing
/// a symlink as its last component.
pub fn open_dir_path(path: &Path) -> rustix::io::Result<OwnedFd> {
    openat(rustix::fs::CWD, path, DIR_FLAGS, Mode::empty())
}

/// Where [`DirCache::open`] stopped.
pub enum Opened<'a> {
    /// The directory is open.
    Dir(BorrowedFd<'a>),
    /// This prefix (relative path) does not exist.
    Missing(String),
    /// This prefix is a symlink or not a directory.
    Blocked(String),
}

/// A stack of open directories along the current relative path: visiting paths in sorted order
/// opens each directory once.
pub struct DirCache {
    root: OwnedFd,
    stack: Vec<(Vec<u8>, OwnedFd)>,
}

impl DirCache {
    pub fn new(root: OwnedFd) -> DirCache {
        DirCache {
            root,
            stack: Vec::new(),
        }
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory `dir` (relative, `/`-separated, `""` for the root).
    pub fn open(&mut self, dir: &str) -> rustix::io::Result<Opened<'_>> {
        let comps: Vec<&[u8]> = if dir.is_empty() {
            Vec::new()
        } else {
            dir.as_bytes().split(|&b| b == b'/').collect()
        };
        let mut keep = 0;
        while keep < self.stack.len() && keep < comps.len() && self.stack[keep].0 == comps[keep] {
            keep += 1;
        }
        self.stack.truncate(keep);
        for (i, comp) in comps.iter().enumerate().skip(keep) {
            let parent = match self.stack.last() {
                Some((_, fd)) => fd.as_fd(),
                None => self.root.as_fd(),
            };
            match openat(parent, OsStr::from_bytes(comp), DIR_FLAGS, Mode::empty()) {
                Ok(fd) => self.stack.push((comp.to_vec(), fd)),
                Err(Errno::NOENT) => return Ok(Opened::Missing(join(&comps[..=i]))),
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    return Ok(Opened::Blocked(join(&comps[..=i])))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Opened::Dir(match self.stack.last() {
            Some((_, fd)) => fd.as_fd(),
            None => self.root.as_fd(),
        }))
    }

    /// Forgets open directories at or below `dir` (after removing or replacing it).
    pub fn forget(&mut self, dir: &str) {
        let n = if dir.is_empty() {
            0
        } else {
            dir.split('/').count()
        };
        if self.stack.len() >= n {
            self.stack.truncate(n.saturating_sub(1));
        }
    }
}

fn join(comps: &[&[u8]]) -> String {
    let v: Vec<String> = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    v.join("/")
}

/// Splits a relative path into (parent dir, name).
pub fn split(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> rustix::io::Result<Option<Stat>> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// One entry seen by [`walk`].
pub struct Walked<'a> {
    pub rel: &'a str,
    pub stat: &'a Stat,
    pub dir: BorrowedFd<'a>,
    pub name: &'a str,
}

/// Walks the tree below `root` (not following symlinks, not leaving the file system), calling
/// `f` for every entry in sorted order (parents before children). `f` returns whether to descend
/// into a directory. Names that are not UTF-8 are passed to `bad_name`.
pub fn walk(
    root: BorrowedFd<'_>,
    prefix: &str,
    f: &mut dyn FnMut(&Walked<'_>) -> anyhow::Result<bool>,
    bad_name: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let dev = rustix::fs::fstat(root)?.st_dev;
    walk_inner(rustix::io::dup(root)?, prefix, dev, f, bad_name)
}

/// Walks one directory (taking ownership of its fd: no second open for reading it).
pub fn walk_inner(
    dir: OwnedFd,
    prefix: &str,
    dev: u64,
    f: &mut dyn FnMut(&Walked<'_>) -> anyhow::Result<bool>,
    bad_name: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut names = Vec::new();
    let mut rd = Dir::new(dir).with_context(|| format!("reading the directory {prefix:?}"))?;
    for e in rd.by_ref() {
        let e = e.with_context(|| format!("reading the directory {prefix:?}"))?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        match std::str::from_utf8(n) {
            Ok(s) => names.push(s.to_string()),
            Err(_) => bad_name(format!(
                "{prefix}{}{}",
                if prefix.is_empty() { "" } else { "/" },
                String::from_utf8_lossy(n)
            )),
        }
    }
    let dir = rd.fd()?;
    names.sort_unstable();
    for name in names {
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let Some(st) = lstat_at(dir, &name).with_context(|| format!("lstat {rel:?}"))? else {
            continue;
        };
        let descend = f(&Walked {
            rel: &rel,
            stat: &st,
            dir,
            name: &name,
        })?;
        if descend && file_type(&st) == FileType::Directory && st.st_dev == dev {
            match openat(dir, name.as_str(), DIR_FLAGS, Mode::empty()) {
                Ok(sub) => walk_inner(sub, &rel, dev, f, bad_name)?,
                Err(Errno::NOENT) | Err(Errno::LOOP) | Err(Errno::NOTDIR) => {}
                Err(e) => return Err(e).with_context(|| format!("opening the directory {rel:?}")),
            }
        }
    }
    Ok(())
}
