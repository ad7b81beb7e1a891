//! Removing live entries: what the image dropped (the engine's first phase), what engineers
//! added within a `reset`'s scope (its last phase), and the backup taken before an edit is
//! overwritten or removed (`state_dir/backups/<time>/<path>`). It must never remove an entry
//! that differs from the manifest without `--force` or `reset`, never without a backup first,
//! and never a directory that still holds files not from the image (except in a reset).

use super::Engine;
use crate::fs::at::{self, DirCache, Opened};
use crate::fs::reap::Reaper;
use crate::fs::walk::{self, Walk};
use crate::image::Kind;
use crate::sync::live::{equals_manifest, kind_of, read_at, readlink};
use crate::sync::manifest::MEntry;
use crate::sync::MAX_LISTED;
use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Stat};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd};

impl Engine<'_> {
    /// A path the image no longer has.
    /// (It leaves the new manifest whatever happens here: an edit kept is the engineer's file.)
    pub(super) fn delete(&mut self, dc: &mut DirCache, p: &str, m: &MEntry) -> Result<()> {
        let (parent, name) = at::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(_) => {
                return Ok(());
            }
            Opened::Blocked(b) => {
                // When the image itself turned that directory into a file or symlink (and an
                // interrupted run already put it there), its old children are simply gone.
                if self.tree.get(&b).is_none_or(|e| e.kind == Kind::Dir) {
                    self.keep(p, &format!("{b} is a symlink or a file in the live tree"));
                }
                return Ok(());
            }
        };
        let Some(st) = at::lstat_at(d, name)? else {
            return Ok(());
        };
        let same = equals_manifest(m, &st, d, name, &mut None)?;
        if !same && !self.opts.force {
            self.keep(p, "removed from the image but changed here");
            return Ok(());
        }
        if self.opts.dry_run {
            self.count("deleted");
            self.change("delete", p, "");
            return Ok(());
        }
        if !same {
            self.backup(p, d, name, &st)?;
        }
        let flags = if kind_of(&st) == Some(Kind::Dir) {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        self.journal_intent(p, None)?;
        // A file is held so that its last close, on the reaper's thread, frees it.
        let held = (flags != AtFlags::REMOVEDIR)
            .then(|| Reaper::hold(d, name))
            .flatten();
        match rustix::fs::unlinkat(d, name, flags) {
            Ok(()) => {
                if let Some(fd) = held {
                    self.reaper.release(fd);
                }
                self.count("deleted");
                self.change("delete", p, "");
            }
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {
                if self.notes.len() < MAX_LISTED {
                    self.notes.push(format!(
                        "kept the directory {p}: the image dropped it but it holds files that are not from the image"
                    ));
                }
            }
            Err(e) => return Err(e).with_context(|| format!("removing {p} from the code tree")),
        }
        if flags == AtFlags::REMOVEDIR {
            dc.forget(p);
        }
        self.step();
        Ok(())
    }

    pub(super) fn backup(
        &mut self,
        rel: &str,
        d: BorrowedFd<'_>,
        name: &str,
        st: &Stat,
    ) -> Result<()> {
        let base = match &self.backup_dir {
            Some(b) => b.clone(),
            None => {
                let stamp: String = crate::state::now()
                    .0
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect();
                let mut b = self.cfg.state_dir.join("backups").join(&stamp);
                let mut i = 1;
                while b.exists() {
                    b = self
                        .cfg
                        .state_dir
                        .join("backups")
                        .join(format!("{stamp}.{i}"));
                    i += 1;
                }
                self.backup_dir = Some(b.clone());
                b
            }
        };
        let dest = base.join(rel);
        let parent = dest.parent().unwrap_or(&base);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the backup directory {}", parent.display()))?;
        match kind_of(st) {
            Some(Kind::File) => {
                let data = read_at(d, name, u64::MAX)
                    .with_context(|| format!("reading {rel} to back it up"))?;
                std::fs::write(&dest, data)
                    .with_context(|| format!("writing the backup {}", dest.display()))?;
            }
            Some(Kind::Symlink) => {
                std::os::unix::fs::symlink(readlink(d, name)?, &dest)
                    .with_context(|| format!("writing the backup {}", dest.display()))?;
            }
            _ => {
                let _ = std::fs::create_dir_all(&dest);
            }
        }
        self.count("backed_up");
        Ok(())
    }

    /// reset: removes an entry engineers added (backed up first), a directory with its content.
    pub(super) fn remove_added(&mut self, dc: &mut DirCache, p: &str) -> Result<()> {
        let (parent, name) = at::split(p);
        let Opened::Dir(d) = dc.open(parent)? else {
            return Ok(());
        };
        let Some(st) = at::lstat_at(d, name)? else {
            return Ok(());
        };
        if kind_of(&st) == Some(Kind::Dir) {
            let sub = at::open_dir_at(d, name)?;
            let mut inner = Vec::new();
            Walk::default().serial(sub.as_fd(), p, &mut |e: &walk::Entry<'_>| {
                Ok(e.rel_utf8().map(|r| inner.push(r)).is_some())
            })?;
            let d2 = rustix::io::dup(d)?;
            self.backup(p, d2.as_fd(), name, &st)?;
            for q in inner.iter().rev() {
                let (qp, qn) = at::split(q);
                if let Opened::Dir(qd) = dc.open(qp)? {
                    if let Some(qs) = at::lstat_at(qd, qn)? {
                        let qd2 = rustix::io::dup(qd)?;
                        if kind_of(&qs) == Some(Kind::Dir) {
                            let _ = std::fs::create_dir_all(
                                self.backup_dir.clone().unwrap_or_default().join(q),
                            );
                            dc.forget(q);
                            rustix::fs::unlinkat(qd2.as_fd(), qn, AtFlags::REMOVEDIR)?;
                        } else {
                            self.backup(q, qd2.as_fd(), qn, &qs)?;
                            rustix::fs::unlinkat(qd2.as_fd(), qn, AtFlags::empty())?;
                        }
                    }
                }
            }
            dc.forget(p);
            let Opened::Dir(d) = dc.open(parent)? else {
                return Ok(());
            };
            rustix::fs::unlinkat(d, name, AtFlags::REMOVEDIR)?;
        } else {
            let d2 = rustix::io::dup(d)?;
            self.backup(p, d2.as_fd(), name, &st)?;
            rustix::fs::unlinkat(d2.as_fd(), name, AtFlags::empty())?;
        }
        self.count("removed_added");
        self.change("remove", p, "added here; backed up");
        Ok(())
    }
}
