//! Directory-fd-relative file system access for trees that other people can write.
//!
//! `/srv/mediawiki` is writable by engineers, so any path string resolved by the kernel from the
//! top could run through a symlink they planted. Everything here goes one component at a time
//! from an open directory fd, with `O_NOFOLLOW|O_DIRECTORY`; a component that is a symlink or not
//! a directory stops the lookup and is reported to the caller, who skips that subtree.
//!
//! [`open_dir_at`] is the only way below a tree's root to open a directory (the walk, the
//! [`DirCache`] and every caller use it), and [`open_regular`] the only way to open a file whose
//! inode root will change: it refuses symlinks, hard-linked inodes (they may live outside the
//! tree), FIFOs, devices and other filesystems. Must never resolve a path from the top below a
//! root that the configuration named.

use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use rustix::path::Arg;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Flags for opening a directory without ever following a symlink.
pub const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// Opens the directory `name` in `parent`, never through a symlink (`ELOOP`/`ENOTDIR` when it
/// is one, or not a directory).
pub fn open_dir_at<P: Arg>(parent: BorrowedFd<'_>, name: P) -> rustix::io::Result<OwnedFd> {
    openat(parent, name, DIR_FLAGS, Mode::empty())
}

/// What [`open_regular`] found.
pub enum Regular {
    /// A regular file with one link on the expected filesystem, open read-only, and its stat.
    Open(OwnedFd, Stat),
    /// Replaced (by a symlink or a directory) or removed since it was listed.
    Gone,
    /// A FIFO, socket or device.
    NotRegular,
    /// More than one link: the inode may also live outside the tree.
    HardLinked(u64),
    /// On another filesystem than `dev`.
    OtherFilesystem,
}

/// Opens the regular file `name` in `dir` for changing its inode's metadata (owner, mode,
/// ACLs), never through a symlink and never blocking on a FIFO; checks on the descriptor itself
/// that it is a regular file with one link (on filesystem `dev`, when given).
pub fn open_regular<P: Arg>(
    dir: BorrowedFd<'_>,
    name: P,
    dev: Option<u64>,
) -> rustix::io::Result<Regular> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOENT | Errno::NXIO | Errno::ISDIR) => return Ok(Regular::Gone),
        Err(e) => return Err(e),
    };
    let st = rustix::fs::fstat(&fd)?;
    Ok(if file_type(&st) != FileType::RegularFile {
        Regular::NotRegular
    } else if st.st_nlink > 1 {
        Regular::HardLinked(st.st_nlink)
    } else if dev.is_some_and(|d| d != st.st_dev) {
        Regular::OtherFilesystem
    } else {
        Regular::Open(fd, st)
    })
}

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
            match open_dir_at(parent, OsStr::from_bytes(comp)) {
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
