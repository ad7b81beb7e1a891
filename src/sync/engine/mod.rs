//! The write engine: one run brings the live tree, within a scope, to the image's tree and
//! returns the new manifest and the report, in four phases: what the image dropped (children
//! first); directories and symlinks in order, files decided and queued; file contents streamed
//! from the image; for `reset`, removal of what engineers added. The per-path decision is in
//! `decide`, putting entries in place in `write`, deletions and backups in `remove`. It must
//! never follow a symlink of the live tree (directories come from a [`DirCache`], each opened
//! from its parent's fd), never overwrite or remove an edit without `--force` and a backup
//! first, and never create a named temp file that the journal does not list first.
//! Over 500 lines: the four phases and the manifest's rewrite share the engine's state and its
//! one pass beside the old manifest (the per-path work is already in the submodules).

use super::live::collect_added;
use super::manifest::{self, MEntry, Reader, Writer};
use super::{in_scope, metrics, sync_dir, under, MAX_LISTED, TEST_KILL_AFTER};
use crate::config::Config;
use crate::fs::at::{self, DirCache};
use crate::image::{Entry, Image, Tree};
use crate::plan::{Change, ComponentPlan};
use anyhow::{Context, Result};
use rustix::fs::Mode;
use rustix::io::Errno;
use std::collections::{BTreeMap, HashMap};
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

/// A file to write in the content phase: the live state seen when deciding, and whether it
/// is an edit to back up first (kept only for files that had a live entry).
struct Pending {
    seen: Option<(u64, i64, i64, i64)>,
    backup: bool,
}

/// What the new manifest says of one path of the tree: the old manifest's line (the image did
/// not change it, or it was kept), queued for the content phase, or the tree's entry with the
/// live inode, mtime and ctime. 24 bytes (two inode values no file system hands out mark the
/// first two), as there is one per tree entry.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot(u64, i64, i64);

impl Slot {
    const OLD: Slot = Slot(u64::MAX, 0, 0);
    const QUEUED: Slot = Slot(u64::MAX - 1, 0, 0);

    fn new((ino, mt, ct): (u64, i64, i64)) -> Slot {
        Slot(ino.min(u64::MAX - 2), mt, ct)
    }

    /// The live state, when it is the tree's entry.
    fn live(self) -> Option<(u64, i64, i64)> {
        (self.0 < u64::MAX - 1).then_some((self.0, self.1, self.2))
    }
}

/// How the old manifest and the tree line up, as the pass beside them found it, in file order:
/// what the new manifest is made of (see [`Engine::write_manifest`]).
#[derive(Clone, Copy, Debug)]
enum Seg {
    /// Lines `span` of the old manifest are those of tree entries `j..j + n`, one for one, and
    /// the image did not change them (the run leaves them be: their lines are copied).
    Same { span: (u64, u64), j: u32, n: u32 },
    /// The line `span` of the old manifest is that of tree entry `j`, which the run decides on.
    Pair { span: (u64, u64), j: u32 },
    /// Lines the tree does not have: kept (out of scope) or dropped.
    Old { span: (u64, u64), keep: bool },
    /// Tree entries `j..j + n` the old manifest does not have.
    New { j: u32, n: u32 },
}

/// Appends `s` to `segs`, merged into the last one when it goes on from it.
fn push_seg(segs: &mut Vec<Seg>, s: Seg) {
    match (segs.last_mut(), s) {
        (
            Some(Seg::Same { span, j, n }),
            Seg::Same {
                span: sp,
                j: sj,
                n: sn,
            },
        ) if span.1 == sp.0 && *j + *n == sj => {
            span.1 = sp.1;
            *n += sn;
        }
        (Some(Seg::Old { span, keep }), Seg::Old { span: sp, keep: k })
            if span.1 == sp.0 && *keep == k =>
        {
            span.1 = sp.1;
        }
        (Some(Seg::New { j, n }), Seg::New { j: sj, n: sn }) if *j + *n == sj => *n += sn,
        _ => segs.push(s),
    }
}

pub(super) struct Engine<'a> {
    cfg: &'a Config,
    image: &'a Image,
    tree: Tree,
    /// Per tree index, what the new manifest records (the old manifest is streamed, never
    /// held: the new one is the old one with these slots applied, written at the end).
    slots: Vec<Slot>,
    /// What the image dropped (in scope), as the old manifest had it.
    gone: Vec<(String, MEntry)>,
    /// How the old manifest and the tree line up (none when that took too many segments: the
    /// new manifest is then merged by path), and the old manifest's open file.
    segs: Option<Vec<Seg>>,
    source: Option<std::fs::File>,
    /// During the content phase the tree is lent to the image's fetch: the hashes of written
    /// files whose tree entry had none yet (the `directory` source hashes lazily) wait here.
    hashes: Option<Vec<(u32, [u8; 32])>>,
    opts: EngineOpts,
    policy: Option<crate::policy::Policy>,
    policy_errors: u64,
    journal: Option<std::fs::File>,
    backup_dir: Option<PathBuf>,
    /// Files queued for the content phase, by tree index.
    pending: HashMap<usize, Pending>,
    counts: BTreeMap<&'static str, u64>,
    changes: Vec<Change>,
    notes: Vec<String>,
    kept: u64,
    kill_after: Option<u64>,
    steps: u64,
    /// Counts for a progress display, when someone watches.
    pub(super) progress: crate::progress::Sink,
    /// The clock of `-v`'s "by" times: the command's start when it sets it, else the engine's.
    pub(super) started: Instant,
    pid: u32,
    /// The content phase's copy buffer, one for the run.
    buf: Vec<u8>,
    /// Closes the inodes replaced or removed, off the writer's path ([`crate::fs::reap`]).
    reaper: crate::fs::reap::Reaper,
}

pub(super) struct Outcome {
    counts: BTreeMap<&'static str, u64>,
    changes: Vec<Change>,
    notes: Vec<String>,
    pub(super) files: u64,
    pub(super) kept: u64,
    /// The code tree was missing or empty when the run began: everything in it now was
    /// written by this run, so it holds no edit.
    pub(super) fresh: bool,
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
            slots: vec![Slot::OLD; tree.len()],
            tree,
            gone: Vec::new(),
            segs: None,
            source: None,
            hashes: None,
            opts,
            policy,
            policy_errors: 0,
            journal,
            backup_dir: None,
            pending: HashMap::new(),
            counts: BTreeMap::from([("written", 0), ("deleted", 0), ("kept_edits", 0)]),
            changes: Vec::new(),
            notes,
            kept: 0,
            kill_after,
            steps: 0,
            progress: None,
            started: Instant::now(),
            pid: std::process::id(),
            buf: Vec::new(),
            reaper: Default::default(),
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
                self.policy_failed(name, &e);
            }
        }
    }

    /// Counts a failure of the permissions policy (not fatal: `apply` converges it later) and
    /// says the first few.
    fn policy_failed(&mut self, what: &str, e: &anyhow::Error) {
        self.policy_errors += 1;
        if self.policy_errors <= 3 {
            log::warn!("applying the permissions policy to {what:?}: {e:#}");
        }
    }

    /// Whether the code tree is missing or an empty directory (not a symlink), before the run
    /// touches it.
    fn tree_is_fresh(&self) -> bool {
        super::tree_is_fresh(&self.cfg.code.path)
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
        let t0 = self.started;
        let fresh = self.tree_is_fresh();
        let mut dc = self.open_root()?;
        let files = self.tree.len() as u64;
        // One pass over the old manifest beside the tree (both sorted): what the image dropped
        // (in scope), and which paths need a decision: all but those the image did not change.
        let (p, source) = self.pass_all()?;
        let Pass {
            todo,
            olds,
            reread,
            gone,
            segs,
        } = p;
        self.segs = segs;
        self.source = source;
        log::debug!(
            "the pass beside the old manifest done by {:.3}s",
            t0.elapsed().as_secs_f64()
        );
        // Phase 1: what the image dropped, children first.
        for (p, m) in gone.iter().rev() {
            self.delete(&mut dc, p, m)?;
        }
        self.gone = gone;
        log::debug!(
            "phase 1 (deletions) done by {:.3}s (peak {} MiB)",
            t0.elapsed().as_secs_f64(),
            crate::logging::peak_mib()
        );
        // Phase 2: directories and symlinks in order; files decided and queued.
        let mut old = if reread {
            Some(Reader::open(self.cfg)?)
        } else {
            None
        };
        let mut k = 0;
        let mut blocked: Option<String> = None;
        let mut tp = String::new();
        for &i in &todo {
            let i = i as usize;
            let p = self.tree.path_into(i, &mut tp);
            if blocked.as_deref().is_some_and(|b| under(p, b)) {
                continue;
            }
            let m = match &mut old {
                Some(r) => r.seek(p)?,
                None => {
                    while k < olds.len() && (olds[k].0 as usize) < i {
                        k += 1;
                    }
                    olds.get(k)
                        .filter(|o| o.0 as usize == i)
                        .map(|o| o.1.clone())
                }
            };
            let p = p.to_string();
            let e = self.tree.entry(i);
            if let Some(b) = self.decide(&mut dc, i, &p, e, m)? {
                blocked = Some(b);
            }
        }
        drop(old);
        log::debug!(
            "phase 2 (decisions) done by {:.3}s (peak {} MiB)",
            t0.elapsed().as_secs_f64(),
            crate::logging::peak_mib()
        );
        // Phase 3: file contents (layer order for layered images).
        drop(todo); // (on a first sync, every entry)
        let queued = |i: &usize| self.slots[*i] == Slot::QUEUED;
        // (u32 a file, as the tree's indices fit: the fetch sorts it in place.)
        let mut wanted: Vec<u32> = Vec::with_capacity((0..self.slots.len()).filter(queued).count());
        wanted.extend((0..self.slots.len()).filter(queued).map(|i| i as u32));
        if !self.opts.dry_run && !wanted.is_empty() {
            // While the tree is lent to the fetch, the hashes of files written without one
            // wait aside. Only lazily hashed trees have such files (the `directory` source,
            // and snapshots on a first sync: every file), and those sources open each file on
            // its own, so they are fetched a few thousand files at a time and the hashes go
            // into the tree in between: they are then never held twice. Blobs carry every
            // hash and are read in one pass over the layers.
            let chunk = if self.image.lazy_hashes() {
                4096
            } else {
                wanted.len()
            };
            let image = self.image;
            for part in wanted.chunks_mut(chunk) {
                let tree = std::mem::take(&mut self.tree);
                self.hashes = Some(Vec::new());
                let r = image.fetch(&tree, part, &mut |i, r| {
                    self.write_file(&mut dc, &tree, i, r)
                });
                self.tree = tree;
                for (i, h) in self.hashes.take().unwrap_or_default() {
                    self.tree.set_hash(i as usize, h)?;
                }
                r?;
            }
        } else {
            for &i in &wanted {
                let p = self.tree.path(i as usize).to_string();
                self.count("written");
                self.change("write", &p, "dry run");
            }
        }
        log::debug!(
            "phase 3 (file contents) done by {:.3}s (peak {} MiB)",
            t0.elapsed().as_secs_f64(),
            crate::logging::peak_mib()
        );
        // Phase 4 (reset): what engineers added in scope goes, after a backup.
        if self.opts.remove_added {
            let mut added = Vec::new();
            let scope = self.opts.scope.clone();
            {
                // The new manifest has the tree's paths (in scope, the image dropped the rest;
                // a dry run leaves those in place, so they are not "added").
                let tree = &self.tree;
                let gone = &self.gone;
                let dry = self.opts.dry_run;
                let known = |p: &str| {
                    tree.contains_key(p)
                        || (dry && gone.binary_search_by(|g| g.0.as_str().cmp(p)).is_ok())
                };
                for s in &scope {
                    collect_added(&mut dc, s, &known, &mut added)?;
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
        if !self.opts.dry_run {
            self.write_manifest()?;
            log::debug!(
                "wrote the manifest by {:.3}s (peak {} MiB)",
                t0.elapsed().as_secs_f64(),
                crate::logging::peak_mib()
            );
        }
        Ok(Outcome {
            counts: self.counts,
            changes: self.changes,
            notes: self.notes,
            files,
            kept: self.kept,
            fresh,
        })
    }
}

/// What the pass beside the old manifest found: the tree entries that need a decision (and the
/// old entries of those, up to a bound; past it, `reread`: phase 2 reads the manifest again),
/// what the image dropped in scope, and how the two line up (see [`Seg`]; none past a bound).
struct Pass {
    todo: Vec<u32>,
    olds: Vec<(u32, MEntry)>,
    reread: bool,
    gone: Vec<(String, MEntry)>,
    segs: Option<Vec<Seg>>,
}

/// How many old entries the pass keeps for phase 2. (Debug builds, which the tests run, keep
/// only 2, so that both ways are taken by the tests' small trees.)
const KEEP_OLD: usize = if cfg!(debug_assertions) { 2 } else { 100_000 };
/// How many segments (see [`Seg`]) the pass keeps; past it, the new manifest is merged by path.
const MAX_SEGS: usize = if cfg!(debug_assertions) { 8 } else { 100_000 };
/// An old manifest this large is passed over in two halves side by side (at a million entries,
/// about 225 MB, the pass took 0.3-0.45 s in one). Debug builds, which the tests run, split
/// nearly every manifest, so that both ways are taken by the tests' small trees.
const SPLIT_BYTES: u64 = if cfg!(debug_assertions) { 64 } else { 16 << 20 };

impl Pass {
    /// This pass followed by `b`, the pass over the rest of the tree and the manifest: what
    /// one pass over both would have found (but that each half keeps its own share of old
    /// entries: past it, phase 2 reads the manifest again, as past the whole bound).
    fn then(mut self, b: Pass) -> Pass {
        self.todo.extend(b.todo);
        if self.reread || b.reread {
            (self.reread, self.olds) = (true, Vec::new());
        } else {
            self.olds.extend(b.olds);
        }
        self.gone.extend(b.gone);
        self.segs = match (self.segs, b.segs) {
            (Some(mut a), Some(b)) => {
                for s in b {
                    push_seg(&mut a, s);
                }
                (a.len() <= MAX_SEGS).then_some(a)
            }
            _ => None,
        };
        self
    }
}

/// One pass beside tree entries `js` and `old` (on its first entry, if `more`), which holds
/// the old manifest's lines of those paths and no other, keeping up to `keep_old` old
/// entries: see [`Pass`].
fn pass(
    tree: &Tree,
    (js, keep_old): (std::ops::Range<usize>, usize),
    old: &mut Reader,
    mut more: bool,
    opts: &EngineOpts,
    progress: &crate::progress::Sink,
) -> Result<Pass> {
    let mut p = Pass {
        todo: Vec::new(),
        olds: Vec::new(),
        reread: false,
        gone: Vec::new(),
        // (With a delta, the lines are not all in one file: the new manifest is merged.)
        segs: (!old.has_delta()).then(Vec::new),
    };
    let seg = |segs: &mut Option<Vec<Seg>>, s: Seg| {
        if let Some(v) = segs {
            push_seg(v, s);
            if v.len() > MAX_SEGS {
                *segs = None;
            }
        }
    };
    let n = js.end;
    let mut j = js.start;
    let mut tp = String::new(); // the path of tree entry j
    let mut fields = Vec::new(); // its image fields, as a manifest line has them
    if j < n {
        tree.path_into(j, &mut tp);
    }
    loop {
        while j < n && (!more || tp.as_str() < old.path()) {
            if let Some(pr) = progress {
                pr.scanned(1);
            }
            if in_scope(&opts.scope, &tp) {
                p.todo.push(j as u32);
            }
            seg(&mut p.segs, Seg::New { j: j as u32, n: 1 });
            j += 1;
            if j < n {
                tree.path_next(j, &mut tp);
            }
        }
        if !more {
            break;
        }
        let path = old.path();
        if j < n && tp == path {
            if let Some(pr) = progress {
                pr.scanned(1);
            }
            if in_scope(&opts.scope, path)
                && (opts.all_changed || !unchanged(old, &tree.entry(j), &mut fields)?)
            {
                let m = old.entry()?;
                p.todo.push(j as u32);
                if p.olds.len() < keep_old && !p.reread {
                    p.olds.push((j as u32, m));
                } else {
                    (p.reread, p.olds) = (true, Vec::new());
                }
                let (span, j) = (old.span(), j as u32);
                seg(&mut p.segs, Seg::Pair { span, j });
            } else {
                let (span, j) = (old.span(), j as u32);
                seg(&mut p.segs, Seg::Same { span, j, n: 1 });
            }
            j += 1;
            if j < n {
                tree.path_next(j, &mut tp);
            }
        } else {
            let keep = !in_scope(&opts.scope, path);
            if !keep {
                p.gone.push((path.to_string(), old.entry()?));
            }
            seg(
                &mut p.segs,
                Seg::Old {
                    span: old.span(),
                    keep,
                },
            );
        }
        more = old.next()?;
    }
    Ok(p)
}

impl Engine<'_> {
    /// The pass beside the whole tree and old manifest, in two halves side by side when the
    /// manifest is large, and the manifest's open file. A half that finds damage, or halves
    /// that do not join in order, are passed over again in one, which reports it where it is.
    fn pass_all(&self) -> Result<(Pass, Option<std::fs::File>)> {
        let n = self.tree.len();
        let mut old = Reader::open(self.cfg)?;
        if let Some(mut second) = old.split(SPLIT_BYTES)? {
            let first_path = second.path().to_string();
            let j0 = self.tree.lower_bound(&first_path);
            let (tree, opts, progress) = (&self.tree, &self.opts, &self.progress);
            // (Each half keeps half as many old entries, so the two hold no more.)
            let half = KEEP_OLD.div_ceil(2);
            let (a, b) = std::thread::scope(|s| {
                let h = s.spawn(|| pass(tree, (j0..n, half), &mut second, true, opts, progress));
                let a = old
                    .next()
                    .and_then(|more| pass(tree, (0..j0, half), &mut old, more, opts, progress));
                (a, h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            });
            match (a, b) {
                (Ok(a), Ok(b)) if old.path() < first_path.as_str() => {
                    return Ok((a.then(b), old.into_source()));
                }
                _ => old = Reader::open(self.cfg)?,
            }
        }
        let more = old.next()?;
        let p = pass(
            &self.tree,
            (0..n, KEEP_OLD),
            &mut old,
            more,
            &self.opts,
            &self.progress,
        )?;
        Ok((p, old.into_source()))
    }
}

/// Whether the image did not change the path that tree entry `e` and the old manifest's current
/// line share: the common case, settled without parsing the line when it holds `e`'s image
/// fields byte for byte (`fields` is a buffer to render them in); else the line is parsed and
/// compared, which gives the same answer.
fn unchanged(old: &Reader, e: &Entry, fields: &mut Vec<u8>) -> Result<bool> {
    // A file of the `directory` source, which hashes lazily, carries no hash: like rsync's
    // quick check (and `decide`'s), the same size and mtime are the same file, and the
    // manifest's line, hash and all, stays. (Sent on to `decide`, it would do the same, and
    // hold its old entry till then.)
    if e.kind == crate::image::Kind::File && e.hash.is_none() {
        let m = old.entry()?;
        return Ok(m.e.hash.is_some()
            && (e.kind, e.mode, e.size, e.mtime, e.mtime_nsec)
                == (m.e.kind, m.e.mode, m.e.size, m.e.mtime, m.e.mtime_nsec)
            && e.target == m.e.target);
    }
    if manifest::fields_round_trip(e) {
        fields.clear();
        manifest::image_fields(e, fields);
        if old.same_image_fields(fields) {
            return Ok(true);
        }
    }
    Ok(old.entry()?.e == *e)
}

impl Engine<'_> {
    /// The new manifest: the old one with the slots applied; the paths the image dropped in
    /// scope leave it. Made of the segments the pass found (the lines of unchanged paths copied
    /// in bulk), or, when there were too many or an entry the pass saw unchanged was written
    /// after all, merged by path ([`Engine::merge_manifest`]).
    fn write_manifest(&self) -> Result<()> {
        if self.write_delta()? {
            return Ok(());
        }
        let Some(segs) = &self.segs else {
            return self.merge_manifest();
        };
        let old = |i: u32, n: u32| {
            self.slots[i as usize..(i + n) as usize]
                .iter()
                .all(|s| *s == Slot::OLD)
        };
        if !segs.iter().all(|s| match *s {
            Seg::Same { j, n, .. } => old(j, n),
            _ => true,
        }) {
            return self.merge_manifest();
        }
        let src = || {
            self.source
                .as_ref()
                .context("the old manifest was not kept open (a bug): run `sync` again")
        };
        let mut w = Writer::create(self.cfg)?;
        let mut tp = String::new();
        let mut last = None; // the tree entry whose path is in `tp`
        let mut path = |i: usize, tp: &mut String| {
            if last.is_some_and(|l: usize| l + 1 == i) {
                self.tree.path_next(i, tp);
            } else {
                self.tree.path_into(i, tp);
            }
            last = Some(i);
        };
        for s in segs {
            let (i, n) = match *s {
                Seg::Same { span, .. } | Seg::Old { span, keep: true } => {
                    w.copy(src()?, span)?;
                    continue;
                }
                Seg::Old { keep: false, .. } => continue,
                Seg::Pair { span, j } => {
                    if self.slots[j as usize].live().is_none() {
                        w.copy(src()?, span)?;
                        continue;
                    }
                    (j as usize, 1)
                }
                Seg::New { j, n } => (j as usize, n as usize),
            };
            for i in i..i + n {
                if let Some(live) = self.slots[i].live() {
                    path(i, &mut tp);
                    let e = self.tree.entry(i);
                    w.entry(&tp, &MEntry { e, live })?;
                }
            }
        }
        w.commit()
    }

    /// The new manifest as a delta of the old one ([`manifest::delta`]): the lines of the
    /// entries this run put in place, and the paths the image dropped in scope leaving it.
    /// `false`, with nothing written, when there are too many for a delta.
    fn write_delta(&self) -> Result<bool> {
        let live = self.slots.iter().filter(|s| s.live().is_some()).count();
        if !manifest::delta::room(self.cfg, live + self.gone.len(), self.slots.len()) {
            return Ok(false);
        }
        // The paths dropped and the tree's entries put in place, two lists in path order that
        // share no path, merged as the delta is written (one line made at a time).
        let tree = &self.tree;
        let mut gone = self.gone.iter().map(|(p, _)| p).peekable();
        let mut lives = (self.slots.iter().enumerate())
            .filter_map(|(i, s)| s.live().map(|l| (i, l)))
            .map(|(i, live)| {
                let p = tree.path(i);
                let mut s = String::new();
                manifest::line(
                    &p,
                    &MEntry {
                        e: tree.entry(i),
                        live,
                    },
                    &mut s,
                );
                (p, s.into_bytes())
            })
            .peekable();
        let changes = std::iter::from_fn(|| match (gone.peek(), lives.peek()) {
            (Some(g), Some((t, _))) if g.as_str() < t.as_str() => {
                gone.next().map(|p| (p.clone(), Vec::new()))
            }
            (Some(_), None) => gone.next().map(|p| (p.clone(), Vec::new())),
            _ => lives.next(),
        });
        manifest::delta::write(self.cfg, changes)
    }

    /// The new manifest merged by path: the old one (streamed again) with the slots applied;
    /// the paths the image dropped in scope leave it.
    fn merge_manifest(&self) -> Result<()> {
        let mut old = Reader::open(self.cfg)?;
        let mut w = Writer::create(self.cfg)?;
        let mut more = old.next()?;
        let n = self.tree.len();
        let mut i = 0;
        let mut tp = String::new(); // the path of tree entry i
        if n > 0 {
            self.tree.path_into(0, &mut tp);
        }
        while more || i < n {
            let o = more.then(|| old.path());
            match o {
                Some(o) if i == n || o < tp.as_str() => {
                    if !in_scope(&self.opts.scope, o) {
                        w.raw(old.raw())?;
                    }
                    more = old.next()?;
                }
                _ => {
                    let same = o == Some(tp.as_str());
                    match self.slots[i].live() {
                        Some(live) => w.entry(
                            &tp,
                            &MEntry {
                                e: self.tree.entry(i),
                                live,
                            },
                        )?,
                        None if same => w.raw(old.raw())?,
                        None => {}
                    }
                    if same {
                        more = old.next()?;
                    }
                    i += 1;
                    if i < n {
                        self.tree.path_next(i, &mut tp);
                    }
                }
            }
        }
        w.commit()
    }

    /// Records what the new manifest says of tree entry `i`: `e`, with this live state.
    fn record(&mut self, i: usize, e: Entry, live: (u64, i64, i64)) -> Result<()> {
        if self.hashes.is_none() {
            // (In the content phase the tree is lent out; `write_file` keeps the hash.)
            self.tree.set_entry(i, &e)?;
        }
        self.slots[i] = Slot::new(live);
        Ok(())
    }
}
