//! The write engine: one run brings the live tree, within a scope, to the image's tree and
//! returns the new manifest and the report, in four phases: what the image dropped (children
//! first); directories and symlinks in order, files decided and queued; file contents streamed
//! from the image; for `reset`, removal of what engineers added. The per-path decision is in
//! `decide`, putting entries in place in `write`, deletions and backups in `remove`. It must
//! never follow a symlink of the live tree (directories come from a [`DirCache`], each opened
//! from its parent's fd), never overwrite or remove an edit without `--force` and a backup
//! first, and never create a named temp file that the journal does not list first.

use super::live::collect_added;
use super::manifest::Manifest;
use super::{in_scope, metrics, sync_dir, under, MAX_LISTED, TEST_KILL_AFTER};
use crate::config::Config;
use crate::fs::at::{self, DirCache};
use crate::image::{Image, Tree};
use crate::plan::{Change, ComponentPlan};
use anyhow::{Context, Result};
use rustix::fs::Mode;
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::Instant;

mod decide;
mod remove;
mod write;

pub(super) struct EngineOpts {
    pub(super) force: bool,
    pub(super) dry_run: bool,
    /// Treat every path as changed in the image (force, reset): the live tree is compared.
    pub(super) all_changed: bool,
    pub(super) scope: Vec<String>,
    /// Remove live entries that are neither in the image nor the manifest (reset).
    pub(super) remove_added: bool,
}

/// A file to write in the content phase, with the live state seen when deciding.
struct Pending {
    seen: Option<(u64, i64, i64, i64)>,
    backup: bool,
}

pub(super) struct Engine<'a> {
    cfg: &'a Config,
    image: &'a Image,
    tree: Tree,
    /// The last sync's manifest, updated in place into this sync's (each path's old entry is
    /// read before it is replaced).
    man: Manifest,
    opts: EngineOpts,
    policy: Option<crate::policy::Policy>,
    policy_errors: u64,
    journal: Option<std::fs::File>,
    backup_dir: Option<PathBuf>,
    /// Files queued for the content phase, by tree index.
    pending: BTreeMap<usize, Pending>,
    counts: BTreeMap<&'static str, u64>,
    changes: Vec<Change>,
    notes: Vec<String>,
    kept: u64,
    kill_after: Option<u64>,
    steps: u64,
    /// Counts for a progress display, when someone watches.
    pub(super) progress: crate::progress::Sink,
    pid: u32,
}

pub(super) struct Outcome {
    pub(super) manifest: Manifest,
    counts: BTreeMap<&'static str, u64>,
    changes: Vec<Change>,
    notes: Vec<String>,
    pub(super) files: u64,
    pub(super) kept: u64,
}

impl Outcome {
    pub(super) fn plan(&self, started: Instant) -> ComponentPlan {
        ComponentPlan {
            changes: self.changes.clone(),
            counts: self
                .counts
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            notes: self.notes.clone(),
            observed: serde_json::Value::Null,
            metrics: metrics(
                self.counts.get("written").copied().unwrap_or(0),
                self.kept,
                started,
                self.files,
            ),
        }
    }
}

impl<'a> Engine<'a> {
    pub(super) fn new(
        cfg: &'a Config,
        image: &'a Image,
        tree: Tree,
        man: Manifest,
        opts: EngineOpts,
        notes: Vec<String>,
    ) -> Result<Engine<'a>> {
        let policy = match crate::policy::Policy::from_config(cfg) {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!("the permissions policy is not available ({e:#}): written entries keep the image's modes until `apply permissions` runs");
                None
            }
        };
        let journal = if opts.dry_run {
            None
        } else {
            let p = sync_dir(cfg).join("journal");
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .with_context(|| format!("opening the journal {}", p.display()))?,
            )
        };
        let kill_after = std::env::var(TEST_KILL_AFTER)
            .ok()
            .and_then(|v| v.parse().ok());
        Ok(Engine {
            cfg,
            image,
            tree,
            man,
            opts,
            policy,
            policy_errors: 0,
            journal,
            backup_dir: None,
            pending: BTreeMap::new(),
            counts: BTreeMap::from([("written", 0), ("deleted", 0), ("kept_edits", 0)]),
            changes: Vec::new(),
            notes,
            kept: 0,
            kill_after,
            steps: 0,
            progress: None,
            pid: std::process::id(),
        })
    }

    fn count(&mut self, k: &'static str) {
        *self.counts.entry(k).or_default() += 1;
    }

    fn change(&mut self, action: &str, target: &str, detail: &str) {
        if self.changes.len() < MAX_LISTED {
            self.changes.push(Change::new(action, target, detail));
        }
    }

    fn keep(&mut self, p: &str, why: &str) {
        self.kept += 1;
        self.count("kept_edits");
        if self.notes.len() < MAX_LISTED {
            self.notes.push(format!("kept {p}: {why}"));
        } else if self.notes.len() == MAX_LISTED {
            self.notes
                .push("... more kept edits (see `mw-experimental diff`)".into());
        }
    }

    /// The test hook ([`TEST_KILL_AFTER`]).
    fn step(&mut self) {
        self.steps += 1;
        if self.kill_after == Some(self.steps) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Gives a written entry the permissions policy through the permissions engine. Until that
    /// engine is merged its stub fails ("not implemented yet"): logged, never fatal.
    fn apply_policy(&mut self, dir: BorrowedFd<'_>, name: &str) {
        if let Some(p) = &self.policy {
            if let Err(e) = crate::policy::fix_at(p, dir, std::ffi::OsStr::new(name)) {
                self.policy_errors += 1;
                if self.policy_errors <= 3 {
                    log::warn!("applying the permissions policy to {name:?}: {e:#}");
                }
            }
        }
    }

    fn open_root(&self) -> Result<DirCache> {
        let path = &self.cfg.code.path;
        let fd = match at::open_dir_path(path) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if !self.opts.dry_run => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("creating the code tree {}", path.display()))?;
                let fd = at::open_dir_path(path)?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(self.cfg.code_mode()))?;
                fd
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "opening the code tree {} (it must be a directory, not a symlink)",
                        path.display()
                    )
                })
            }
        };
        Ok(DirCache::new(fd))
    }

    pub(super) fn run(mut self) -> Result<Outcome> {
        let t0 = Instant::now();
        let mut dc = self.open_root()?;
        let files = self.tree.len() as u64;
        // Phase 1: what the image dropped, children first.
        let gone: Vec<String> = self
            .man
            .entries
            .keys()
            .rev()
            .filter(|p| in_scope(&self.opts.scope, p) && !self.tree.contains_key(*p))
            .cloned()
            .collect();
        for p in gone {
            self.delete(&mut dc, &p)?;
        }
        log::debug!(
            "phase 1 (deletions) done in {:.3}s (peak {} MiB)",
            t0.elapsed().as_secs_f64(),
            crate::logging::peak_mib()
        );
        // Phase 2: directories and symlinks in order; files decided and queued.
        let mut blocked: Option<String> = None;
        for i in 0..self.tree.len() {
            if let Some(pr) = &self.progress {
                pr.scanned(1);
            }
            let p = self.tree.path(i);
            if blocked.as_deref().is_some_and(|b| under(p, b)) || !in_scope(&self.opts.scope, p)
            {
                continue;
            }
            let p = p.to_string();
            let e = self.tree.entry(i).clone();
            if let Some(b) = self.decide(&mut dc, i, &p, e)? {
                blocked = Some(b);
            }
        }
        log::debug!(
            "phase 2 (decisions) done in {:.3}s (peak {} MiB)",
            t0.elapsed().as_secs_f64(),
            crate::logging::peak_mib()
        );
        // Phase 3: file contents (layer order for layered images).
        let wanted: Vec<usize> = self.pending.keys().copied().collect();
        if !self.opts.dry_run && !wanted.is_empty() {
            let image = self.image;
            let tree = std::mem::take(&mut self.tree);
            let r = image.fetch(&tree, &wanted, &mut |i, r| {
                self.write_file(&mut dc, &tree, i, r)
            });
            self.tree = tree;
            r?;
        } else {
            for &i in &wanted {
                let p = self.tree.path(i).to_string();
                self.count("written");
                self.change("write", &p, "dry run");
            }
        }
        log::debug!(
            "phase 3 (file contents) done in {:.3}s (peak {} MiB)",
            t0.elapsed().as_secs_f64(),
            crate::logging::peak_mib()
        );
        // Phase 4 (reset): what engineers added in scope goes, after a backup.
        if self.opts.remove_added {
            let mut added = Vec::new();
            let scope = self.opts.scope.clone();
            {
                let tree = &self.tree;
                let new = &self.man;
                for s in &scope {
                    collect_added(
                        &mut dc,
                        s,
                        &|p| tree.contains_key(p) || new.entries.contains_key(p),
                        &mut added,
                    )?;
                }
            }
            for a in added {
                self.remove_added(&mut dc, &a)?;
            }
        }
        if self.policy_errors > 3 {
            log::warn!(
                "the permissions policy failed on {} entries in all",
                self.policy_errors
            );
        }
        Ok(Outcome {
            manifest: self.man,
            counts: self.counts,
            changes: self.changes,
            notes: self.notes,
            files,
            kept: self.kept,
        })
    }
}
