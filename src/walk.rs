//! The traversal of the code tree for the permission policy, built for a tree that
//! unprivileged users write while it runs.
//!
//! Every directory is opened relative to its parent's descriptor with
//! `O_NOFOLLOW|O_DIRECTORY`, so a directory swapped for a symlink is refused by the kernel
//! (`ELOOP`/`ENOTDIR`: reported, left alone) and nothing outside the tree is ever reached.
//! Files are opened the same way (`O_NOFOLLOW|O_NONBLOCK`), checked with `fstat` on that
//! descriptor (regular, one link, same filesystem) and their ACLs read and written on it.
//! Symlinks are counted, never followed; other filesystems are not entered.
//!
//! Work is spread over a small pool of threads sharing a LIFO stack of pending directories
//! `(parent fd, name)`; the stack keeps the walk depth-first, so open descriptors and memory
//! stay proportional to depth times width of one directory, not to the size of the tree.
//! Reports keep exact counts and a bounded sample of paths.

use crate::permissions::{self, examine, write_fix, Fix, Kind, Policy, KINDS};
use crate::plan::{Change, ComponentPlan};
use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;
use serde_json::json;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// How many changes and notes a report lists (the counts are always exact).
pub const SAMPLE: usize = 50;

/// A hook called with a directory's relative path just before it is opened (tests use it to
/// swap a directory for a symlink at exactly that moment).
pub type BeforeOpen<'a> = dyn Fn(&str) + Sync + 'a;

#[derive(Default)]
pub struct WalkOptions<'a> {
    /// Write the fixes (apply) or only count them (check).
    pub apply: bool,
    /// Worker threads; 0: the machine's available parallelism.
    pub threads: usize,
    pub before_open: Option<&'a BeforeOpen<'a>>,
}

/// Counters one worker keeps without locks; summed at the end.
#[derive(Default, Debug, Clone)]
struct Tally {
    drift: [u64; 5],
    dirs: u64,
    files: u64,
    symlinks: u64,
    hardlinks_skipped: u64,
    special_skipped: u64,
    other_filesystem_skipped: u64,
    changed_during_walk: u64,
    errors: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        for (a, b) in self.drift.iter_mut().zip(o.drift) {
            *a += b;
        }
        self.dirs += o.dirs;
        self.files += o.files;
        self.symlinks += o.symlinks;
        self.hardlinks_skipped += o.hardlinks_skipped;
        self.special_skipped += o.special_skipped;
        self.other_filesystem_skipped += o.other_filesystem_skipped;
        self.changed_during_walk += o.changed_during_walk;
        self.errors += o.errors;
    }
}

/// What a walk found (check) or did (apply).
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: bool,
    pub created_root: bool,
    tally: Tally,
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
    pub seconds: f64,
}

impl Outcome {
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut c: BTreeMap<String, u64> = KINDS
            .iter()
            .zip(self.tally.drift)
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        if self.created_root {
            c.insert("create".into(), 1);
        }
        c
    }

    pub fn hardlinks_skipped(&self) -> u64 {
        self.tally.hardlinks_skipped
    }
    pub fn symlinks(&self) -> u64 {
        self.tally.symlinks
    }
    pub fn changed_during_walk(&self) -> u64 {
        self.tally.changed_during_walk
    }

    pub fn into_plan(self, policy: &Policy) -> ComponentPlan {
        let t = &self.tally;
        let counts = self.counts();
        let entries = t.dirs + t.files;
        let observed = json!({
            "enabled": true,
            "path": policy.root,
            "gid": policy.gid,
            "owner_uid": policy.owner_uid,
            "mode": format!("{:04o}", policy.root_mode),
            "directories": t.dirs,
            "files": t.files,
            "symlinks": t.symlinks,
            "hardlinks_skipped": t.hardlinks_skipped,
            "special_skipped": t.special_skipped,
            "other_filesystem_skipped": t.other_filesystem_skipped,
            "changed_during_walk": t.changed_during_walk,
            "drift": counts,
            "applied": self.applied,
        });
        let mut metrics = BTreeMap::new();
        metrics.insert("entries".into(), entries as f64);
        metrics.insert("symlinks".into(), t.symlinks as f64);
        metrics.insert("hardlinks_skipped".into(), t.hardlinks_skipped as f64);
        metrics.insert("special_skipped".into(), t.special_skipped as f64);
        metrics.insert(
            "other_filesystem_skipped".into(),
            t.other_filesystem_skipped as f64,
        );
        metrics.insert("changed_during_walk".into(), t.changed_during_walk as f64);
        metrics.insert("walk_seconds".into(), self.seconds);
        for (k, n) in &counts {
            metrics.insert(format!("drift_{k}"), *n as f64);
        }
        let mut notes = self.notes;
        let summary = [
            (t.symlinks, "symlinks left alone (never followed)"),
            (
                t.hardlinks_skipped,
                "hard-linked files skipped (more than one link: the inode may live outside the tree)",
            ),
            (t.special_skipped, "FIFOs, sockets or devices skipped"),
            (
                t.other_filesystem_skipped,
                "directories on another filesystem not entered",
            ),
            (
                t.changed_during_walk,
                "entries replaced or removed while the walk ran (left alone)",
            ),
        ];
        for (n, what) in summary {
            if n > 0 {
                notes.push(format!("{n} {what}"));
            }
        }
        ComponentPlan {
            changes: self.changes,
            counts,
            notes,
            observed,
            metrics,
        }
    }
}

struct Item {
    parent: Arc<OwnedFd>,
    name: CString,
    rel: String,
}

struct Queue {
    stack: Vec<Item>,
    active: usize,
}

struct Shared<'a> {
    policy: &'a Policy,
    opts: &'a WalkOptions<'a>,
    dev: u64,
    queue: Mutex<Queue>,
    wake: Condvar,
    changes: Mutex<Vec<Change>>,
    n_changes: AtomicUsize,
    notes: Mutex<Vec<String>>,
    n_notes: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

fn join(rel: &str, name: &CStr) -> String {
    let name = name.to_string_lossy();
    if rel.is_empty() {
        name.into_owned()
    } else {
        format!("{rel}/{name}")
    }
}

impl Shared<'_> {
    fn note(&self, msg: impl FnOnce() -> String) {
        if self.n_notes.fetch_add(1, Ordering::Relaxed) < SAMPLE {
            self.notes.lock().unwrap().push(msg());
        }
    }

    fn error(&self, t: &mut Tally, msg: String) {
        t.errors += 1;
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(msg);
        }
    }

    fn shown(&self, rel: &str) -> String {
        permissions::display_rel(&self.policy.root, rel)
            .display()
            .to_string()
    }

    /// Checks (and in apply, fixes) one open entry.
    fn entry(
        &self,
        t: &mut Tally,
        fd: &OwnedFd,
        st: &rustix::fs::Stat,
        kind: Kind,
        rel: &dyn Fn() -> String,
    ) {
        let fix: Fix = match examine(self.policy, fd.as_fd(), st, kind) {
            Ok(f) => f,
            Err(e) => {
                let r = rel();
                self.error(t, format!("reading the ACLs of {}: {e}", self.shown(&r)));
                return;
            }
        };
        if fix.is_empty() {
            return;
        }
        fix.count(&mut t.drift);
        if self.n_changes.load(Ordering::Relaxed) < SAMPLE {
            let r = rel();
            let list = fix.changes(if r.is_empty() { "." } else { &r });
            let mut c = self.changes.lock().unwrap();
            for ch in list {
                if c.len() < SAMPLE {
                    c.push(ch);
                }
            }
            self.n_changes.store(c.len(), Ordering::Relaxed);
        }
        if self.opts.apply {
            if let Err(e) = write_fix(fd.as_fd(), &fix) {
                let r = rel();
                self.error(
                    t,
                    format!(
                        "changing owner, group, mode or ACL of {}: {e}",
                        self.shown(&r)
                    ),
                );
            }
        }
    }

    /// One directory, already open: itself, its files, and its subdirectories (returned).
    fn dir(
        &self,
        t: &mut Tally,
        buf: &mut [MaybeUninit<u8>],
        fd: OwnedFd,
        rel: &str,
        kind: Kind,
    ) -> Vec<Item> {
        let mut subdirs = Vec::new();
        let st = match rustix::fs::fstat(&fd) {
            Ok(st) => st,
            Err(e) => {
                self.error(t, format!("stat of directory {}: {e}", self.shown(rel)));
                return subdirs;
            }
        };
        if st.st_dev != self.dev {
            t.other_filesystem_skipped += 1;
            self.note(|| format!("{}: another filesystem, not entered", self.shown(rel)));
            return subdirs;
        }
        t.dirs += 1;
        self.entry(t, &fd, &st, kind, &|| rel.to_string());
        let fd = Arc::new(fd);
        let mut it = RawDir::new(&*fd, buf);
        while let Some(ent) = it.next() {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    self.error(t, format!("reading directory {}: {e}", self.shown(rel)));
                    break;
                }
            };
            let name = ent.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let mut ty = ent.file_type();
            if ty == FileType::Unknown {
                ty = match rustix::fs::statat(&*fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(s) => FileType::from_raw_mode(s.st_mode),
                    Err(Errno::NOENT) => {
                        t.changed_during_walk += 1;
                        continue;
                    }
                    Err(e) => {
                        self.error(t, format!("stat of {}: {e}", self.shown(&join(rel, name))));
                        continue;
                    }
                };
            }
            match ty {
                FileType::Directory => subdirs.push(Item {
                    parent: fd.clone(),
                    name: name.to_owned(),
                    rel: join(rel, name),
                }),
                FileType::Symlink => t.symlinks += 1,
                FileType::RegularFile => self.file(t, &fd, name, rel),
                _ => {
                    t.special_skipped += 1;
                    self.note(|| {
                        format!(
                            "{}: not a regular file, directory or symlink; skipped",
                            self.shown(&join(rel, name))
                        )
                    });
                }
            }
        }
        subdirs
    }

    fn file(&self, t: &mut Tally, dir: &OwnedFd, name: &CStr, rel: &str) {
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOENT | Errno::NXIO | Errno::ISDIR) => {
                t.changed_during_walk += 1;
                self.note(|| {
                    format!(
                        "{}: replaced or removed while the walk ran; left alone",
                        self.shown(&join(rel, name))
                    )
                });
                return;
            }
            Err(e) => {
                self.error(t, format!("opening {}: {e}", self.shown(&join(rel, name))));
                return;
            }
        };
        let st = match rustix::fs::fstat(&fd) {
            Ok(st) => st,
            Err(e) => {
                self.error(t, format!("stat of {}: {e}", self.shown(&join(rel, name))));
                return;
            }
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            t.special_skipped += 1;
            self.note(|| {
                format!(
                    "{}: not a regular file any more; skipped",
                    self.shown(&join(rel, name))
                )
            });
            return;
        }
        if st.st_nlink > 1 {
            t.hardlinks_skipped += 1;
            self.note(|| {
                format!(
                    "{}: hard-linked file ({} links), skipped: its inode may also live outside the tree",
                    self.shown(&join(rel, name)),
                    st.st_nlink
                )
            });
            return;
        }
        if st.st_dev != self.dev {
            t.other_filesystem_skipped += 1;
            return;
        }
        t.files += 1;
        self.entry(t, &fd, &st, Kind::File, &|| join(rel, name));
    }

    /// Opens a pending directory relative to its parent, never through a symlink.
    fn open(&self, t: &mut Tally, item: &Item) -> Option<OwnedFd> {
        if let Some(hook) = self.opts.before_open {
            hook(&item.rel);
        }
        let flags = OFlags::RDONLY
            | OFlags::DIRECTORY
            | OFlags::NOFOLLOW
            | OFlags::NOCTTY
            | OFlags::CLOEXEC;
        match rustix::fs::openat(&*item.parent, item.name.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => Some(fd),
            Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => {
                t.changed_during_walk += 1;
                self.note(|| {
                    format!(
                        "{}: was a directory, then replaced (by a symlink or file) or removed while the walk ran; left alone, not followed",
                        self.shown(&item.rel)
                    )
                });
                None
            }
            Err(e) => {
                self.error(
                    t,
                    format!("opening directory {}: {e}", self.shown(&item.rel)),
                );
                None
            }
        }
    }

    fn worker(&self) -> Tally {
        let mut t = Tally::default();
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
        loop {
            let item = {
                let mut q = self.queue.lock().unwrap();
                loop {
                    if let Some(it) = q.stack.pop() {
                        q.active += 1;
                        break it;
                    }
                    if q.active == 0 {
                        return t;
                    }
                    q = self.wake.wait(q).unwrap();
                }
            };
            let subs = match self.open(&mut t, &item) {
                Some(fd) => {
                    drop(item.parent);
                    self.dir(&mut t, &mut buf, fd, &item.rel, Kind::Dir)
                }
                None => Vec::new(),
            };
            let mut q = self.queue.lock().unwrap();
            q.active -= 1;
            let n = subs.len();
            q.stack.extend(subs);
            if n > 1 || q.active == 0 {
                self.wake.notify_all();
            } else if n == 1 {
                self.wake.notify_one();
            }
        }
    }
}

/// Walks the tree at `policy.root`: checks every entry, and in apply mode fixes what differs.
/// A missing root is reported as `create` (check) or created with the policy (apply).
pub fn run(policy: &Policy, opts: &WalkOptions) -> Result<Outcome> {
    let started = Instant::now();
    let root = &policy.root;
    let mut out = Outcome {
        applied: opts.apply,
        ..Default::default()
    };
    let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(root, dflags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            out.created_root = true;
            if !opts.apply {
                out.changes.push(Change::new(
                    "create",
                    ".",
                    format!(
                        "directory {} with mode {:04o}",
                        root.display(),
                        policy.root_mode
                    ),
                ));
                out.seconds = started.elapsed().as_secs_f64();
                return Ok(out);
            }
            create_root(root, policy.root_mode)?;
            out.changes.push(Change::new(
                "create",
                ".",
                format!("directory {}", root.display()),
            ));
            rustix::fs::open(root, dflags, Mode::empty())
                .with_context(|| format!("opening the code tree {} just created", root.display()))?
        }
        Err(Errno::LOOP | Errno::NOTDIR) => bail!(
            "the code tree {} is a symlink or not a directory; it is left alone (the walk never \
             follows symlinks): make code.path a real directory",
            root.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("opening the code tree {}", root.display()))
        }
    };
    let st = rustix::fs::fstat(&fd).with_context(|| format!("stat of {}", root.display()))?;
    if let Err(Errno::NOTSUP) = rustix::fs::fgetxattr_query(&fd, crate::acl::ACCESS) {
        bail!(
            "the filesystem of {} does not support POSIX ACLs; mount it with ACL support \
             (ext4 and xfs have it by default) and run again",
            root.display()
        );
    }
    let threads = if opts.threads > 0 {
        opts.threads
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    };
    let shared = Shared {
        policy,
        opts,
        dev: st.st_dev,
        queue: Mutex::new(Queue {
            stack: Vec::new(),
            active: 0,
        }),
        wake: Condvar::new(),
        n_changes: AtomicUsize::new(out.changes.len()),
        changes: Mutex::new(std::mem::take(&mut out.changes)),
        notes: Mutex::new(Vec::new()),
        n_notes: AtomicUsize::new(0),
        errors: Mutex::new(Vec::new()),
    };
    let mut tally = Tally::default();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
    let subs = shared.dir(&mut tally, &mut buf, fd, "", Kind::Root);
    drop(buf);
    shared.queue.lock().unwrap().stack.extend(subs);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| shared.worker())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for t in &tallies {
        tally.add(t);
    }
    out.tally = tally;
    out.changes = shared.changes.into_inner().unwrap();
    out.notes = shared.notes.into_inner().unwrap();
    out.errors = shared.errors.into_inner().unwrap();
    out.seconds = started.elapsed().as_secs_f64();
    if out.tally.errors > 0 {
        bail!(
            "{} {}: {} of {} entries failed (the others were {}); first: {}",
            if opts.apply {
                "applying the permission policy to"
            } else {
                "checking the permission policy on"
            },
            root.display(),
            out.tally.errors,
            out.tally.dirs + out.tally.files + out.tally.errors,
            if opts.apply { "converged" } else { "checked" },
            out.errors.join("; ")
        );
    }
    Ok(out)
}

/// Creates the root directory (and missing parents, root-owned 0755); the walk then gives it
/// its owner, group, mode and ACLs.
fn create_root(root: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {} for the code tree", parent.display()))?;
    }
    rustix::fs::mkdir(root, Mode::from_raw_mode(mode & 0o777))
        .with_context(|| format!("creating the code tree {}", root.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ctimes(root: &Path) -> Vec<(std::path::PathBuf, i64, i64, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                for e in std::fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
            }
            out.push((p, m.ctime(), m.ctime_nsec(), m.mode()));
        }
        out.sort();
        out
    }

    /// The walk pauses just before opening `a/victim`; the hook swaps that directory for a
    /// symlink to a directory outside the tree. The walk must refuse it, report it, and leave
    /// everything outside exactly as it was.
    #[test]
    fn directory_swapped_for_a_symlink_during_the_walk_is_reported_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("a/victim/sub")).unwrap();
        std::fs::write(root.join("a/victim/sub/f.php"), "x").unwrap();
        std::fs::write(root.join("a/keep.php"), "x").unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        let before = ctimes(&outside);
        let policy = Policy {
            root: root.clone(),
            owner_uid: 0,
            gid: 45_678,
            root_mode: 0o2775,
        };
        let hook = |rel: &str| {
            if rel == "a/victim" {
                std::fs::rename(root.join("a/victim"), tmp.path().join("moved")).unwrap();
                std::os::unix::fs::symlink(&outside, root.join("a/victim")).unwrap();
            }
        };
        let opts = WalkOptions {
            apply: true,
            threads: 2,
            before_open: Some(&hook),
        };
        let out = run(&policy, &opts).unwrap();
        assert_eq!(out.changed_during_walk(), 1, "{out:?}");
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("a/victim") && n.contains("replaced")),
            "{:?}",
            out.notes
        );
        assert_eq!(before, ctimes(&outside), "something outside was written");
        assert_eq!(
            rustix::fs::getxattr(&outside, crate::acl::DEFAULT, &mut [0u8; 64][..]),
            Err(Errno::NODATA)
        );
        // The moved-away directory was never reached either (it was not yet opened).
        assert_eq!(
            rustix::fs::getxattr(
                tmp.path().join("moved"),
                crate::acl::DEFAULT,
                &mut [0u8; 64][..]
            ),
            Err(Errno::NODATA)
        );
        // The rest of the tree was converged.
        assert!(
            rustix::fs::getxattr(root.join("a"), crate::acl::DEFAULT, &mut [0u8; 64][..]).is_ok()
        );
        let again = run(&policy, &WalkOptions::default()).unwrap();
        assert!(
            again.counts().values().all(|&n| n == 0),
            "{:?}",
            again.counts()
        );
        assert_eq!(again.symlinks(), 1);
    }
}
