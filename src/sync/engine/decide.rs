//! The engine's decision for one path of the image: compare the image's entry with the manifest
//! (did the image change it?) and with the live entry (untouched since we wrote it, already the
//! new content, or an engineer's edit), then keep it, adopt it, put a directory or symlink in
//! place at once, or queue a file for the content phase. It must never replace a live entry
//! that differs from the manifest unless forced, and then only after a backup.

use super::Engine;
use crate::fs::at::{self, DirCache, Opened};
use crate::image::{Entry, Kind};
use crate::sync::live::{equals_manifest, hash_at, kind_of, quick, readlink};
use crate::sync::manifest::MEntry;
use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, Mode, Stat};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd};

impl Engine<'_> {
    /// One path of the image. Returns a prefix to skip when the live tree blocks a subtree.
    pub(super) fn decide(
        &mut self,
        dc: &mut DirCache,
        i: usize,
        p: &str,
        mut e: Entry,
        m: Option<MEntry>,
    ) -> Result<Option<String>> {
        if !self.opts.all_changed {
            if let Some(m) = &m {
                if self.same_in_image(p, &mut e, m)? {
                    if m.e != e {
                        self.record(i, e, m.live)?;
                    }
                    return Ok(None);
                }
            }
        }
        let (parent, name) = at::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(b) => {
                self.keep(p, &format!("{b} was removed here"));
                return Ok(Some(b));
            }
            Opened::Blocked(b) => {
                self.keep(
                    p,
                    &format!(
                        "{b} is a symlink or a file in the live tree; that subtree is skipped"
                    ),
                );
                return Ok(Some(b));
            }
        };
        let st = at::lstat_at(d, name)?;
        let mut live_hash = None;
        let mut backup = false;
        if let Some(st) = &st {
            if self.equals_new(p, &mut e, st, d, name, &mut live_hash)? {
                // Already what the image has (an interrupted run's work, or the same edit).
                if !self.opts.dry_run {
                    self.apply_policy(d, name);
                }
                let live = at::lstat_at(d, name)?
                    .map(|s| quick(&s))
                    .unwrap_or_default();
                self.fill_hash(p, &mut e)?;
                self.record(i, e, live)?;
                return Ok(None);
            }
            let ours = match &m {
                Some(m) => equals_manifest(m, st, d, name, &mut live_hash)?,
                None => false,
            };
            if !ours {
                if !self.opts.force {
                    if m.is_none() {
                        // An engineer's own entry where the image now has one: the manifest
                        // takes the image's entry (with no live state of ours), so `diff` shows
                        // it as changed, and as deleted should the engineer remove it later.
                        self.fill_hash(p, &mut e)?;
                        self.record(i, e.clone(), (0, 0, 0))?;
                    }
                    self.keep(
                        p,
                        if m.is_some() {
                            "changed here and in the image (--force to overwrite; it is backed up first)"
                        } else {
                            "created here and now also in the image (--force to overwrite; it is backed up first)"
                        },
                    );
                    return Ok((e.kind == Kind::Dir).then(|| p.to_string()));
                }
                backup = true;
            }
        } else if m.as_ref().is_some_and(|m| m.e.kind == e.kind) && !self.opts.force {
            // Gone here while the image still has it as the same type: an engineer deleted it.
            // (When the type changed, a missing entry is an interrupted replacement: go on.)
            self.keep(p, "deleted here (--force or reset to restore it)");
            return Ok((e.kind == Kind::Dir).then(|| p.to_string()));
        }
        let live_kind = st.as_ref().and_then(kind_of);
        if self.opts.dry_run {
            if e.kind == Kind::File {
                self.queue(i, None, backup);
            } else {
                self.count("written");
                self.change("write", p, "dry run");
            }
            return Ok(None);
        }
        if backup {
            if let Some(st) = &st {
                if e.kind != Kind::File {
                    self.backup(p, d, name, st)?;
                }
            }
        }
        // Clear the way when the type changes (only what is ours or forced gets here).
        let mut cleared = false;
        if let Some(lk) = live_kind {
            if lk != e.kind {
                if e.kind == Kind::File && lk != Kind::Dir {
                    // A rename replaces a symlink fine.
                } else {
                    let flags = if lk == Kind::Dir {
                        AtFlags::REMOVEDIR
                    } else {
                        AtFlags::empty()
                    };
                    self.journal_intent(p, None)?;
                    match rustix::fs::unlinkat(d, name, flags) {
                        Ok(()) => {
                            cleared = true;
                            if lk == Kind::Dir {
                                dc.forget(p);
                            }
                        }
                        Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {
                            self.keep(
                                p,
                                "a directory here holds files that are not from the image",
                            );
                            return Ok(Some(p.to_string()));
                        }
                        Err(err) => {
                            return Err(err)
                                .with_context(|| format!("removing {p} from the code tree"))
                        }
                    }
                    self.step();
                }
            }
        }
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            _ => bail!("the directory of {p} vanished while syncing"),
        };
        match e.kind {
            Kind::Dir => {
                if live_kind != Some(Kind::Dir)
                    || !matches!(at::lstat_at(d, name)?, Some(ref s) if kind_of(s) == Some(Kind::Dir))
                {
                    self.journal_intent(p, Some(&e))?;
                    // Made with the mode the policy gives it: under its parent's default ACL
                    // it then needs no ACL write (see `write_file`). Never with setgid (the
                    // parent's passes down; systemd's RestrictSUIDSGID= refuses the call).
                    let mode = match &self.policy {
                        Some(pol) => pol.mode_for(true, e.mode & 0o777) & 0o1777,
                        None => e.mode & 0o777,
                    };
                    match rustix::fs::mkdirat(d, name, Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(err) => {
                            return Err(err).with_context(|| format!("creating the directory {p}"))
                        }
                    }
                    self.step();
                }
                // The policy and the status on one descriptor of the directory, not by name.
                let written = self.policy_on_dir(d, name, p);
                self.finish_written(d, name, (i, p), e, ("mkdir", ""), written.as_ref())?;
            }
            Kind::Symlink => {
                let tmp = self.temp_name(name);
                self.journal_tmp(parent, &tmp)?;
                let _ = rustix::fs::unlinkat(d, tmp.as_str(), AtFlags::empty());
                let target = e.target.clone().unwrap_or_default();
                rustix::fs::symlinkat(target.as_str(), d, tmp.as_str())
                    .with_context(|| format!("creating the symlink {p}"))?;
                self.step();
                self.journal_intent(p, Some(&e))?;
                rustix::fs::renameat(d, tmp.as_str(), d, name)
                    .with_context(|| format!("renaming the symlink into place at {p}"))?;
                self.step();
                self.finish_written(d, name, (i, p), e, ("symlink", &target), None)?;
            }
            Kind::File => {
                // What the decision saw (nothing, once cleared): the content phase writes only
                // if the name still has it, so a change from here on is kept, not overwritten.
                let seen = st.filter(|_| !cleared).map(|s| {
                    let q = quick(&s);
                    (q.0, q.1, q.2, s.st_size)
                });
                self.queue(i, seen, backup);
            }
        }
        Ok(None)
    }

    /// For a directory just made or found in place: opens it (never through a symlink),
    /// applies the permissions policy on that descriptor and returns its status after. `None`
    /// (and nothing done) without a policy, or when `name` is not a directory any more: the
    /// caller then goes by name.
    fn policy_on_dir(&mut self, d: BorrowedFd<'_>, name: &str, p: &str) -> Option<Stat> {
        let pol = self.policy.as_ref()?;
        let fd = at::open_dir_at(d, name).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        match crate::policy::fix_fd(pol, fd.as_fd(), &st) {
            Ok(false) => Some(st),
            Ok(true) => rustix::fs::fstat(&fd).ok(),
            Err(err) => {
                self.policy_failed(p, &err);
                rustix::fs::fstat(&fd).ok()
            }
        }
    }

    /// Whether the image has the same entry as the manifest at `p` (the image did not change it).
    fn same_in_image(&mut self, p: &str, e: &mut Entry, m: &MEntry) -> Result<bool> {
        if e.kind != m.e.kind || e.mode != m.e.mode || e.target != m.e.target {
            return Ok(false);
        }
        if e.kind != Kind::File {
            return Ok(true);
        }
        if e.size != m.e.size {
            return Ok(false);
        }
        match e.hash {
            Some(h) => Ok(Some(h) == m.e.hash),
            None => {
                // The directory source: like rsync's quick check, same size and mtime is the
                // same file; otherwise hash it.
                if e.mtime == m.e.mtime && e.mtime_nsec == m.e.mtime_nsec {
                    e.hash = m.e.hash;
                    return Ok(true);
                }
                self.fill_hash(p, e)?;
                Ok(e.hash == m.e.hash)
            }
        }
    }

    pub(super) fn fill_hash(&mut self, p: &str, e: &mut Entry) -> Result<()> {
        if e.kind == Kind::File && e.hash.is_none() {
            e.hash = Some(self.image.hash_file(&self.tree, p)?);
        }
        Ok(())
    }

    /// Whether the live entry already is what the image has at `p`.
    fn equals_new(
        &mut self,
        p: &str,
        e: &mut Entry,
        st: &Stat,
        d: BorrowedFd<'_>,
        name: &str,
        live_hash: &mut Option<[u8; 32]>,
    ) -> Result<bool> {
        if kind_of(st) != Some(e.kind) {
            return Ok(false);
        }
        Ok(match e.kind {
            Kind::Dir => true,
            Kind::Symlink => e.target.as_deref() == Some(readlink(d, name)?.as_str()),
            Kind::File => {
                if st.st_size as u64 != e.size || (st.st_mode & 0o100) != (e.mode & 0o100) {
                    return Ok(false);
                }
                self.fill_hash(p, e)?;
                let h = match live_hash {
                    Some(h) => *h,
                    None => *live_hash.insert(hash_at(d, name)?),
                };
                Some(h) == e.hash
            }
        })
    }
}
