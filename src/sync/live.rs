//! Reading the live code tree that engineers edit: whether a live entry is what the manifest
//! says we wrote (the cheap inode/mtime/ctime check, else the content hash), a live file read or
//! hashed, a live entry's kind, and the entries below a path that are not ours. Shared by the
//! engine, `diff`, `reset` and recovery. It only reads: it must never write, and never follow a
//! symlink (files are opened with `O_NOFOLLOW` from their parent's fd, walks are [`crate::fs::walk`]'s).

use super::manifest::MEntry;
use crate::fs::at::{self, DirCache, Opened};
use crate::fs::walk::{self, Walk};
use crate::image::Kind;
use anyhow::{Context, Result};
use rustix::fs::{Mode, OFlags, Stat};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

/// Live entries below `s` that `known` does not know (an engineer's), parents only.
pub(super) fn collect_added(
    dc: &mut DirCache,
    s: &str,
    known: &dyn Fn(&str) -> bool,
    out: &mut Vec<String>,
) -> Result<()> {
    let (dir, start_walk) = if s.is_empty() {
        (dc.root().try_clone_to_owned()?, true)
    } else {
        let (parent, name) = at::split(s);
        let Opened::Dir(d) = dc.open(parent)? else {
            return Ok(());
        };
        let Some(st) = at::lstat_at(d, name)? else {
            return Ok(());
        };
        if !known(s) {
            out.push(s.to_string());
            return Ok(());
        }
        if at::file_type(&st) != rustix::fs::FileType::Directory {
            return Ok(());
        }
        match at::open_dir_at(d, name) {
            Ok(fd) => (fd, true),
            Err(_) => return Ok(()),
        }
    };
    if start_walk {
        Walk::default().serial(dir.as_fd(), s, &mut |e: &walk::Entry<'_>| {
            let Some(rel) = e.rel_utf8() else {
                log::warn!("skipped {:?}: its name is not UTF-8", e.rel());
                return Ok(false);
            };
            if known(&rel) {
                Ok(true)
            } else {
                out.push(rel);
                Ok(false)
            }
        })?;
    }
    Ok(())
}

pub(super) fn read_at(d: BorrowedFd<'_>, name: &str, limit: u64) -> Result<Vec<u8>> {
    let fd = rustix::fs::openat(
        d,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let mut buf = Vec::new();
    std::fs::File::from(fd).take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

pub(super) fn hash_at(d: BorrowedFd<'_>, name: &str) -> Result<[u8; 32]> {
    let fd = rustix::fs::openat(
        d,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .with_context(|| format!("opening {name:?} to compare it"))?;
    let mut hs = blake3::Hasher::new();
    std::io::copy(&mut std::fs::File::from(fd), &mut hs)?;
    Ok(*hs.finalize().as_bytes())
}

pub(super) fn kind_of(st: &Stat) -> Option<Kind> {
    match at::file_type(st) {
        rustix::fs::FileType::Directory => Some(Kind::Dir),
        rustix::fs::FileType::RegularFile => Some(Kind::File),
        rustix::fs::FileType::Symlink => Some(Kind::Symlink),
        _ => None,
    }
}

/// (inode, mtime ns, ctime ns) of a live entry: unchanged means untouched since we wrote it.
pub(super) fn quick(st: &Stat) -> (u64, i64, i64) {
    (
        st.st_ino,
        st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
        st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
    )
}

pub(super) fn readlink(d: BorrowedFd<'_>, name: &str) -> Result<String> {
    let t = rustix::fs::readlinkat(d, name, Vec::new())?;
    Ok(String::from_utf8_lossy(t.as_bytes()).into_owned())
}

/// Whether the live entry is what the manifest says we wrote (content, not permissions:
/// modes and ACLs belong to the permissions engine).
pub(super) fn equals_manifest(
    m: &MEntry,
    st: &Stat,
    d: BorrowedFd<'_>,
    name: &str,
    live_hash: &mut Option<[u8; 32]>,
) -> Result<bool> {
    if kind_of(st) != Some(m.e.kind) {
        return Ok(false);
    }
    Ok(match m.e.kind {
        Kind::Dir => true,
        Kind::Symlink => m.e.target.as_deref() == Some(readlink(d, name)?.as_str()),
        Kind::File => {
            if st.st_size as u64 != m.e.size {
                false
            } else if quick(st) == m.live {
                true
            } else {
                let h = match live_hash {
                    Some(h) => *h,
                    None => *live_hash.insert(hash_at(d, name)?),
                };
                Some(h) == m.e.hash
            }
        }
    })
}
