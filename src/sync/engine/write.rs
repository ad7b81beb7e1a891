//! Putting entries in place: a file's content goes into an unnamed `O_TMPFILE` inode (new
//! names) or a journaled temp name in the same directory (replacements), gets its mode and
//! mtime, then is linked or renamed over the name; the manifest records each entry with its live
//! stat. It must never write through a symlink (temp names are created `O_EXCL|O_NOFOLLOW`),
//! never create a temp name before the journal lists it, and never put a file over a live entry
//! that changed after it was decided.

use super::{Engine, Pending, Slot};
use crate::fs::at::{self, DirCache, Opened};
use crate::fs::reap::Reaper;
use crate::image::{Entry, Tree};
use crate::sync::live::quick;
use crate::sync::manifest::{line, MEntry};
use crate::tsv::esc;
use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

impl Engine<'_> {
    pub(super) fn temp_name(&self, name: &str) -> String {
        let mut n = name;
        while n.len() > 200 {
            let mut cut = 200;
            while !n.is_char_boundary(cut) {
                cut -= 1;
            }
            n = &n[..cut];
        }
        format!(".mwx-tmp.{n}.{}", self.pid)
    }

    pub(super) fn journal_tmp(&mut self, parent: &str, tmp: &str) -> Result<()> {
        if let Some(j) = &mut self.journal {
            let mut line = String::from("tmp\t");
            if !parent.is_empty() {
                esc(parent, &mut line);
                line.push('/');
            }
            esc(tmp, &mut line);
            line.push('\n');
            j.write_all(line.as_bytes())
                .context("writing the sync journal")?;
        }
        Ok(())
    }

    /// Journals what the next step puts at `p` (`None`: removes it), before the step, so that
    /// the next run's recovery can record in the manifest whatever a killed run had done. (Its
    /// manifest still has the old entries; a later image that equals them would otherwise
    /// leave the half-done paths as they are, and `diff` would call them edits.)
    pub(super) fn journal_intent(&mut self, p: &str, e: Option<&Entry>) -> Result<()> {
        if let Some(j) = &mut self.journal {
            let mut s = String::new();
            match e {
                Some(e) => {
                    s.push_str("set\t");
                    let m = MEntry {
                        e: e.clone(),
                        live: (0, 0, 0),
                    };
                    line(p, &m, &mut s);
                }
                None => {
                    s.push_str("del\t");
                    esc(p, &mut s);
                    s.push('\n');
                }
            }
            j.write_all(s.as_bytes())
                .context("writing the sync journal")?;
        }
        Ok(())
    }

    /// Queues tree entry `i` (a file) for the content phase, with the live state seen now.
    pub(super) fn queue(&mut self, i: usize, seen: Option<(u64, i64, i64, i64)>, backup: bool) {
        self.slots[i] = Slot::QUEUED;
        if seen.is_some() || backup {
            self.pending.insert(i, Pending { seen, backup });
        }
    }

    /// Writes one file: temp file in the same directory, content, mode, mtime, rename.
    pub(super) fn write_file(
        &mut self,
        dc: &mut DirCache,
        tree: &Tree,
        i: usize,
        r: &mut dyn Read,
    ) -> Result<()> {
        if self.slots[i] != Slot::QUEUED {
            return Ok(());
        }
        let pending = self.pending.remove(&i).unwrap_or(Pending {
            seen: None,
            backup: false,
        });
        let p = &tree.path(i);
        let mut e = tree.entry(i);
        let (parent, name) = at::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(b) | Opened::Blocked(b) => {
                self.keep(p, &format!("{b} changed here while syncing"));
                return Ok(());
            }
        };
        // A new name: an unnamed O_TMPFILE inode, linked in once complete (nothing to clean up
        // if the process dies). Replacing a name: a journaled temp name, then rename over it.
        // The unnamed inode is made with the mode the permissions policy gives the image's
        // (nobody can open it by a name before it is complete): under the directory's default
        // ACL it then needs neither the `fchmod` nor the ACL write. A temp name is made 0600
        // and always gets the `fchmod`.
        let want_mode = match &self.policy {
            Some(pol) => pol.mode_for(false, e.mode & 0o1777),
            None => e.mode & 0o1777,
        };
        // A name that was free when decided is linked only if it still is (`linkat` fails when
        // anything took it since): no look-up first.
        let anon = if pending.seen.is_none() {
            rustix::fs::openat(
                d,
                ".",
                OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::from_raw_mode(want_mode),
            )
            .ok()
        } else {
            None
        };
        // The inode to be replaced, held: its last close (on the reaper's thread, after the
        // rename) frees it, not the rename.
        let mut held = None;
        if anon.is_none() {
            if pending.seen.is_some() {
                held = Reaper::hold(d, name);
            }
            let now = match &held {
                Some(fd) => Some(rustix::fs::fstat(fd).with_context(|| format!("lstat {p}"))?),
                None => at::lstat_at(d, name)?,
            };
            let now_seen = now.as_ref().map(|s| {
                let q = quick(s);
                (q.0, q.1, q.2, s.st_size)
            });
            if now_seen != pending.seen {
                self.keep(p, "changed here while syncing");
                return Ok(());
            }
            if pending.backup {
                if let Some(st) = &now {
                    self.backup(p, d, name, st)?;
                }
            }
        }
        let (fd, tmp) = match anon {
            Some(fd) => (fd, None),
            None => {
                let tmp = self.temp_name(name);
                self.journal_tmp(parent, &tmp)?;
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd =
                    match rustix::fs::openat(d, tmp.as_str(), flags, Mode::from_raw_mode(0o600)) {
                        Ok(fd) => fd,
                        Err(Errno::EXIST) => {
                            rustix::fs::unlinkat(d, tmp.as_str(), AtFlags::empty())?;
                            rustix::fs::openat(d, tmp.as_str(), flags, Mode::from_raw_mode(0o600))?
                        }
                        Err(err) => {
                            return Err(err)
                                .with_context(|| format!("creating a temporary file for {p}"))
                        }
                    };
                (fd, Some(tmp))
            }
        };
        let mut f = std::fs::File::from(fd);
        let mut hs = blake3::Hasher::new();
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(1 << 16, 0);
        let mut size = 0u64;
        let copied = (|| -> Result<Stat> {
            loop {
                let n = r
                    .read(&mut buf)
                    .with_context(|| format!("reading {p} from the image"))?;
                if n == 0 {
                    break;
                }
                hs.update(&buf[..n]);
                f.write_all(&buf[..n])
                    .with_context(|| format!("writing {p}"))?;
                size += n as u64;
            }
            let h = *hs.finalize().as_bytes();
            if e.hash.is_some_and(|want| want != h) || size != e.size {
                bail!("{p} changed in the image while it was being read; run sync again");
            }
            e.hash = Some(h);
            let mode = || format!("setting the mode {want_mode:o} of {p}");
            let mut st = rustix::fs::fstat(&f).with_context(mode)?;
            if tmp.is_some() || st.st_mode & 0o7777 != want_mode {
                rustix::fs::fchmod(&f, Mode::from_raw_mode(want_mode)).with_context(mode)?;
                st = rustix::fs::fstat(&f).with_context(mode)?;
            }
            let t = Timespec {
                tv_sec: e.mtime,
                tv_nsec: e.mtime_nsec as _,
            };
            rustix::fs::futimens(
                &f,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
            )
            .with_context(|| format!("setting the modification time of {p}"))?;
            Ok(st)
        })();
        self.buf = buf;
        // The permissions policy on the open inode, before it has its name: the same result
        // as on the name afterwards, without looking it up and opening it again.
        if let Ok(st) = &copied {
            if let Some(pol) = &self.policy {
                if let Err(err) = crate::policy::fix_fd(pol, f.as_fd(), st) {
                    self.policy_failed(p, &err);
                }
            }
        }
        if let Err(err) = copied {
            if let Some(tmp) = &tmp {
                let _ = rustix::fs::unlinkat(d, tmp.as_str(), AtFlags::empty());
            }
            return Err(err);
        }
        self.step();
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            _ => bail!("the directory of {p} vanished while syncing"),
        };
        self.journal_intent(p, Some(&e))?;
        match &tmp {
            None => match rustix::fs::linkat(&f, "", d, name, AtFlags::EMPTY_PATH) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    self.keep(p, "created here while syncing");
                    return Ok(());
                }
                Err(err) => return Err(err).with_context(|| format!("linking {p} into place")),
            },
            Some(tmp) => {
                if let Err(err) = rustix::fs::renameat(d, tmp.as_str(), d, name) {
                    let _ = rustix::fs::unlinkat(d, tmp.as_str(), AtFlags::empty());
                    if err == Errno::ISDIR || err == Errno::NOTEMPTY {
                        self.keep(p, "a directory here where the image has a file");
                        return Ok(());
                    }
                    return Err(err).with_context(|| format!("renaming {p} into place"));
                }
            }
        }
        if let Some(fd) = held {
            self.reaper.release(fd);
        }
        // The inode we wrote, as it is under its name now (the link or rename changed its
        // ctime), without looking the name up again.
        let st = rustix::fs::fstat(&f).with_context(|| format!("reading the status of {p}"))?;
        drop(f);
        self.step();
        let fill = tree.hash(i).is_none().then_some(e.hash).flatten();
        self.finish_written(d, name, (i, p), e, ("write", ""), Some(&st))?;
        if let (Some(h), Some(hs)) = (fill, &mut self.hashes) {
            hs.push((i as u32, h));
        }
        Ok(())
    }

    /// After an entry is in place under its final name: the permissions policy (unless it was
    /// applied on its descriptor before: `written` is then the descriptor's status after it
    /// got its name), then the manifest records it with its live inode, mtime and ctime (the
    /// cheap "untouched since" check of the next run), and the report counts it.
    pub(super) fn finish_written(
        &mut self,
        d: BorrowedFd<'_>,
        name: &str,
        (i, p): (usize, &str),
        e: Entry,
        (action, detail): (&str, &str),
        written: Option<&Stat>,
    ) -> Result<()> {
        let live = match written {
            Some(st) => quick(st),
            None => {
                self.apply_policy(d, name);
                at::lstat_at(d, name)?
                    .map(|s| quick(&s))
                    .unwrap_or_default()
            }
        };
        self.count("written");
        if let Some(pr) = &self.progress {
            pr.wrote(if e.kind == crate::image::Kind::File {
                e.size
            } else {
                0
            });
        }
        self.change(action, p, detail);
        self.record(i, e, live)?;
        Ok(())
    }
}
