//! The `permissions` component: the permission policy ([`crate::policy`]) over every entry of
//! the code tree, checked (plan) or converged (apply), with exact counts and a bounded sample.
//!
//! The walk is [`crate::fs::walk`]'s parallel traversal; this module only supplies what to do
//! with each entry: a directory is examined on the descriptor the walk opened, a regular file
//! is opened through [`crate::fs::at::open_regular`] (one link, same filesystem, never through a
//! symlink) and examined on that descriptor, symlinks are counted and never followed, FIFOs,
//! sockets and devices are skipped. It must never change an entry through a path, and never
//! change an inode that may also live outside the tree.
//!
//! (Over 500 lines because of the test that swaps a directory for a symlink at the moment the
//! walk opens it, which needs the walk's hook and so lives here.)

use crate::config::Config;
use crate::fs::at::{self, Regular};
use crate::fs::walk::{self, BeforeOpen, Entry, Skip, Visitor, Walk};
use crate::plan::{Change, ComponentPlan, SAMPLE};
use crate::policy::{display_rel, examine, write_fix, Fix, Kind, Policy, KINDS};
use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode};
use rustix::io::Errno;
use serde_json::json;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What apply would change.
pub fn check(cfg: &Config) -> Result<ComponentPlan> {
    run(cfg, false, None)
}

/// Converges; returns what it changed.
pub fn apply(cfg: &Config) -> Result<ComponentPlan> {
    run(cfg, true, None)
}

/// Converges, counting entries scanned and changed into `progress` as the walk goes.
pub fn apply_with_progress(cfg: &Config, progress: crate::progress::Sink) -> Result<ComponentPlan> {
    run(cfg, true, progress)
}

fn run(cfg: &Config, apply: bool, progress: crate::progress::Sink) -> Result<ComponentPlan> {
    if !cfg.enabled {
        return Ok(ComponentPlan {
            notes: vec![format!(
                "the switch is off: {} is left exactly as it is",
                cfg.code.path.display()
            )],
            observed: serde_json::json!({"enabled": false, "path": cfg.code.path}),
            ..Default::default()
        });
    }
    let policy = Policy::from_config(cfg)?;
    let opts = WalkOptions {
        apply,
        progress,
        ..Default::default()
    };
    let out = walk_tree(&policy, &opts)?;
    Ok(out.into_plan(&policy))
}

#[derive(Default)]
pub struct WalkOptions<'a> {
    /// Write the fixes (apply) or only count them (check).
    pub apply: bool,
    /// Worker threads; 0: the machine's available parallelism.
    pub threads: usize,
    pub before_open: Option<&'a BeforeOpen<'a>>,
    /// Counts entries scanned and changed, for a progress display.
    pub progress: crate::progress::Sink,
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

/// What every worker shares: the policy and the bounded samples of changes, notes and errors.
struct Shared<'a> {
    policy: &'a Policy,
    apply: bool,
    changes: Mutex<Vec<Change>>,
    n_changes: AtomicUsize,
    notes: Mutex<Vec<String>>,
    n_notes: AtomicUsize,
    errors: Mutex<Vec<String>>,
    progress: crate::progress::Sink,
}

impl Shared<'_> {
    fn note(&self, msg: impl FnOnce() -> String) {
        if self.n_notes.fetch_add(1, Ordering::Relaxed) < SAMPLE {
            self.notes.lock().unwrap().push(msg());
        }
    }

    fn shown(&self, rel: &str) -> String {
        display_rel(&self.policy.root, rel).display().to_string()
    }
}

/// One worker's visitor: examines (and in apply, fixes) each entry the walk hands it.
struct Checker<'s, 'a> {
    s: &'s Shared<'a>,
    t: Tally,
}

impl Checker<'_, '_> {
    fn error(&mut self, msg: String) {
        self.t.errors += 1;
        let mut e = self.s.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(msg);
        }
    }

    /// Checks (and in apply, fixes) one open entry.
    fn examine(
        &mut self,
        fd: BorrowedFd<'_>,
        st: &rustix::fs::Stat,
        kind: Kind,
        rel: &dyn Fn() -> String,
    ) {
        let s = self.s;
        let fix: Fix = match examine(s.policy, fd, st, kind) {
            Ok(f) => f,
            Err(e) => {
                let r = rel();
                self.error(format!("reading the ACLs of {}: {e}", s.shown(&r)));
                return;
            }
        };
        if fix.is_empty() {
            return;
        }
        fix.count(&mut self.t.drift);
        if s.n_changes.load(Ordering::Relaxed) < SAMPLE {
            let r = rel();
            let list = fix.changes(if r.is_empty() { "." } else { &r });
            let mut c = s.changes.lock().unwrap();
            for ch in list {
                if c.len() < SAMPLE {
                    c.push(ch);
                }
            }
            s.n_changes.store(c.len(), Ordering::Relaxed);
        }
        if s.apply {
            if let Some(p) = &s.progress {
                p.wrote(0);
            }
            if let Err(e) = write_fix(fd, &fix) {
                let r = rel();
                self.error(format!(
                    "changing owner, group, mode or ACL of {}: {e}",
                    s.shown(&r)
                ));
            }
        }
    }

    fn file(&mut self, e: &Entry<'_>) {
        let s = self.s;
        match at::open_regular(e.dir, e.name, Some(e.dev)) {
            Ok(Regular::Open(fd, st)) => {
                self.t.files += 1;
                self.examine(fd.as_fd(), &st, Kind::File, &|| e.rel());
            }
            Ok(Regular::Gone) => {
                self.t.changed_during_walk += 1;
                s.note(|| {
                    format!(
                        "{}: replaced or removed while the walk ran; left alone",
                        s.shown(&e.rel())
                    )
                });
            }
            Ok(Regular::NotRegular) => {
                self.t.special_skipped += 1;
                s.note(|| {
                    format!(
                        "{}: not a regular file any more; skipped",
                        s.shown(&e.rel())
                    )
                });
            }
            Ok(Regular::HardLinked(n)) => {
                self.t.hardlinks_skipped += 1;
                s.note(|| {
                    format!(
                        "{}: hard-linked file ({n} links), skipped: its inode may also live outside the tree",
                        s.shown(&e.rel()),
                    )
                });
            }
            Ok(Regular::OtherFilesystem) => self.t.other_filesystem_skipped += 1,
            Err(err) => self.error(format!("opening {}: {err}", s.shown(&e.rel()))),
        }
    }
}

impl Visitor for Checker<'_, '_> {
    fn dir(&mut self, d: &walk::Dir<'_>) -> Result<bool> {
        self.t.dirs += 1;
        if let Some(p) = &self.s.progress {
            p.scanned(1);
        }
        let kind = if d.rel.is_empty() {
            Kind::Root
        } else {
            Kind::Dir
        };
        self.examine(d.fd, d.stat, kind, &|| d.rel.to_string());
        Ok(true)
    }

    fn entry(&mut self, e: &Entry<'_>) -> Result<bool> {
        if let (Some(p), false) = (&self.s.progress, e.file_type == FileType::Directory) {
            p.scanned(1);
        }
        match e.file_type {
            FileType::Directory => return Ok(true),
            FileType::Symlink => self.t.symlinks += 1,
            FileType::RegularFile => self.file(e),
            _ => {
                self.t.special_skipped += 1;
                let s = self.s;
                s.note(|| {
                    format!(
                        "{}: not a regular file, directory or symlink; skipped",
                        s.shown(&e.rel())
                    )
                });
            }
        }
        Ok(false)
    }

    fn skipped(&mut self, rel: &str, why: Skip) {
        let s = self.s;
        match why {
            Skip::Replaced => {
                self.t.changed_during_walk += 1;
                s.note(|| {
                    format!(
                        "{}: was a directory, then replaced (by a symlink or file) or removed while the walk ran; left alone, not followed",
                        s.shown(rel)
                    )
                });
            }
            Skip::OtherFilesystem => {
                self.t.other_filesystem_skipped += 1;
                s.note(|| format!("{}: another filesystem, not entered", s.shown(rel)));
            }
        }
    }

    fn error(&mut self, rel: &str, what: &str, e: Errno) -> Result<()> {
        let msg = format!("{what} {}: {e}", self.s.shown(rel));
        Checker::error(self, msg);
        Ok(())
    }
}

/// Walks the tree at `policy.root`: checks every entry, and in apply mode fixes what differs.
/// A missing root is reported as `create` (check) or created with the policy (apply).
pub fn walk_tree(policy: &Policy, opts: &WalkOptions) -> Result<Outcome> {
    let started = Instant::now();
    let root = &policy.root;
    let mut out = Outcome {
        applied: opts.apply,
        ..Default::default()
    };
    let fd = match at::open_dir_path(root) {
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
            at::open_dir_path(root)
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
    if let Err(Errno::NOTSUP) = rustix::fs::fgetxattr_query(&fd, crate::fs::acl::ACCESS) {
        bail!(
            "the filesystem of {} does not support POSIX ACLs; mount it with ACL support \
             (ext4 and xfs have it by default) and run again",
            root.display()
        );
    }
    let shared = Shared {
        policy,
        apply: opts.apply,
        n_changes: AtomicUsize::new(out.changes.len()),
        changes: Mutex::new(std::mem::take(&mut out.changes)),
        notes: Mutex::new(Vec::new()),
        n_notes: AtomicUsize::new(0),
        errors: Mutex::new(Vec::new()),
        progress: opts.progress.clone(),
    };
    let walk = Walk {
        threads: opts.threads,
        before_open: opts.before_open,
    };
    let workers = walk.parallel(fd.as_fd(), "", || Checker {
        s: &shared,
        t: Tally::default(),
    })?;
    for w in &workers {
        out.tally.add(&w.t);
    }
    drop(workers);
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
            progress: None,
        };
        let out = walk_tree(&policy, &opts).unwrap();
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
            rustix::fs::getxattr(&outside, crate::fs::acl::DEFAULT, &mut [0u8; 64][..]),
            Err(Errno::NODATA)
        );
        // The moved-away directory was never reached either (it was not yet opened).
        assert_eq!(
            rustix::fs::getxattr(
                tmp.path().join("moved"),
                crate::fs::acl::DEFAULT,
                &mut [0u8; 64][..]
            ),
            Err(Errno::NODATA)
        );
        // The rest of the tree was converged.
        assert!(
            rustix::fs::getxattr(root.join("a"), crate::fs::acl::DEFAULT, &mut [0u8; 64][..])
                .is_ok()
        );
        let again = walk_tree(&policy, &WalkOptions::default()).unwrap();
        assert!(
            again.counts().values().all(|&n| n == 0),
            "{:?}",
            again.counts()
        );
        assert_eq!(again.symlinks(), 1);
    }
}
