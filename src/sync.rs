//! The `code` component: keep the tree current from the newest image, keeping engineers' edits.
//!
//! A manifest in `state_dir/sync/manifest.tsv` records what the last sync wrote (path, type,
//! size, mtime, BLAKE3 of the content, mode, symlink target, and the inode/mtime/ctime the live
//! entry had right after we wrote it, for a cheap "untouched since" check). Per path:
//!
//! * the image did not change it: nothing (no stat of the live tree at all);
//! * the image changed it and the live entry still equals the manifest: replaced atomically
//!   (temp file `.mwx-tmp.<name>.<pid>` in the same directory, `renameat` over it);
//! * the live entry already equals the new image: adopted (this is how an interrupted run is
//!   completed: whatever it had renamed into place is recognised, not rewritten);
//! * the live entry differs from both (an engineer's edit): kept and reported, unless `--force`,
//!   which first copies it to `state_dir/backups/<time>/<path>`;
//! * gone from the image: deleted only if the live entry equals the manifest;
//! * not in the manifest (an engineer's file): kept.
//!
//! The same image digest as the last sync ends the run before the live tree is touched. Every
//! directory is opened from its parent's fd with `O_NOFOLLOW|O_DIRECTORY` ([`crate::fsat`]): a
//! live path component that is a symlink or a file stops that subtree, reported. Temp files are
//! listed in `state_dir/sync/journal` before they are created, so the next run removes what a
//! killed run left without walking the tree.

use crate::config::Config;
use crate::fs::at::{self as fsat, DirCache, Opened};
use crate::fs::walk::{self, Walk};
use crate::image::{self, Entry, Image, Kind, Tree};
use crate::plan::{Change, ComponentPlan};
use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    pub force: bool,
    pub dry_run: bool,
}

/// Changes listed one by one in a plan; the counts are always exact.
const MAX_LISTED: usize = 200;

/// The environment variable of the test hook: `N` makes the process SIGKILL itself after its
/// N-th step (a temp file written, a rename, a mkdir, an unlink). For the interruption tests
/// only; never set it in production.
pub const TEST_KILL_AFTER: &str = "MW_EXPERIMENTAL_TEST_KILL_AFTER";

/// What a sync would change (is the tree at the newest image?).
pub fn check(cfg: &Config) -> Result<ComponentPlan> {
    let mut plan = ComponentPlan::default();
    if !cfg.enabled {
        plan.notes
            .push("the switch is off: the tree is left as it is".into());
        return Ok(plan);
    }
    let last = LastSync::read(cfg)?;
    let img = image::newest(cfg)?;
    match &last {
        Some(l) if l.digest == img.digest => {
            plan.observed = l.observed();
        }
        _ => {
            plan.changes.push(Change::new(
                "sync",
                &img.reference,
                format!(
                    "{} -> {}",
                    last.as_ref()
                        .map(|l| l.digest.as_str())
                        .unwrap_or("never synced"),
                    img.digest
                ),
            ));
            plan.counts.insert("image".into(), 1);
            if let Some(l) = &last {
                plan.observed = l.observed();
            }
        }
    }
    Ok(plan)
}

/// Sync, keeping edits (apply's path for the `code` component).
pub fn apply(cfg: &Config) -> Result<ComponentPlan> {
    if !cfg.enabled {
        let mut plan = ComponentPlan::default();
        plan.notes
            .push("the switch is off: the tree is left as it is".into());
        return Ok(plan);
    }
    sync(cfg, &SyncOptions::default())
}

pub fn sync(cfg: &Config, opts: &SyncOptions) -> Result<ComponentPlan> {
    let started = Instant::now();
    let dir = sync_dir(cfg);
    if !opts.dry_run {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the sync state directory {}", dir.display()))?;
        recover(cfg)?;
    }
    let last = LastSync::read(cfg)?;
    let mut img = image::newest(cfg)?;
    log::info!("newest image: {} ({})", img.reference, img.digest);
    log::debug!(
        "found the newest image in {:.3}s",
        started.elapsed().as_secs_f64()
    );
    if let Some(l) = &last {
        if l.digest == img.digest && !opts.force {
            log::info!(
                "{} was synced at {}: nothing to do",
                l.reference,
                l.synced_at
            );
            let mut plan = ComponentPlan {
                observed: l.observed(),
                ..Default::default()
            };
            plan.metrics = metrics(0, 0, started, l.files);
            plan.metrics
                .insert("synced_timestamp_seconds".into(), l.unix as f64);
            return Ok(plan);
        }
    }
    let mut notes = Vec::new();
    let tree = img.tree(&mut notes)?;
    log::debug!(
        "read the image tree by {:.3}s",
        started.elapsed().as_secs_f64()
    );
    if opts.dry_run && fsat::open_dir_path(&cfg.code.path).err() == Some(Errno::NOENT) {
        // Nothing there yet: everything would be written.
        let mut plan = ComponentPlan {
            notes,
            ..Default::default()
        };
        plan.counts.insert("written".into(), tree.len() as u64);
        plan.changes.push(Change::new(
            "create",
            cfg.code.path.display().to_string(),
            format!("{} entries from {}", tree.len(), img.reference),
        ));
        plan.observed = json!({"image": img.reference, "digest": img.digest, "files": tree.len(), "dry_run": true});
        return Ok(plan);
    }
    let old = Manifest::read(cfg)?;
    log::debug!(
        "read the manifest by {:.3}s",
        started.elapsed().as_secs_f64()
    );
    let eng = Engine::new(
        cfg,
        &img,
        tree,
        old,
        EngineOpts {
            force: opts.force,
            dry_run: opts.dry_run,
            all_changed: opts.force,
            scope: vec![String::new()],
            remove_added: false,
        },
        notes,
    )?;
    let out = eng.run()?;
    log::debug!("synced the tree by {:.3}s", started.elapsed().as_secs_f64());
    let mut plan = out.plan(started);
    if !opts.dry_run {
        out.manifest.write(cfg)?;
        log::debug!(
            "wrote the manifest by {:.3}s",
            started.elapsed().as_secs_f64()
        );
        let (at, unix) = crate::state::now();
        let l = LastSync {
            reference: img.reference.clone(),
            digest: img.digest.clone(),
            synced_at: at,
            unix,
            files: out.files,
            local_edits: out.kept,
        };
        l.write(cfg)?;
        plan.metrics
            .insert("synced_timestamp_seconds".into(), unix as f64);
        let _ = std::fs::remove_file(dir.join("journal"));
        plan.observed = l.observed();
    } else {
        plan.observed = json!({"image": img.reference, "digest": img.digest, "files": out.files, "dry_run": true});
    }
    Ok(plan)
}

/// Engineers' edits. Returns the report for stdout (text or JSON per `json`) and whether any
/// edit was found.
pub fn diff(cfg: &Config, paths: &[PathBuf], patch: bool, json: bool) -> Result<(String, bool)> {
    let scope = scope_of(cfg, paths)?;
    let manifest = Manifest::read(cfg)?;
    if manifest.entries.is_empty() {
        bail!(
            "diff: the tree {} was never synced (no manifest in {}); run `mw-experimental sync` first",
            cfg.code.path.display(),
            sync_dir(cfg).display()
        );
    }
    let root = fsat::open_dir_path(&cfg.code.path)
        .with_context(|| format!("opening the code tree {}", cfg.code.path.display()))?;
    let mut dc = DirCache::new(rustix::io::dup(&root)?);
    let mut modified = Vec::new();
    let mut deleted = Vec::new();
    let mut added = Vec::new();
    let mut blocked: Option<String> = None;
    for (p, m) in &manifest.entries {
        if !in_scope(&scope, p) {
            continue;
        }
        if blocked.as_ref().is_some_and(|b| under(p, b)) {
            continue;
        }
        let (parent, name) = fsat::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(_) => {
                deleted.push(p.clone());
                continue;
            }
            Opened::Blocked(b) => {
                modified.push(b.clone());
                blocked = Some(b);
                continue;
            }
        };
        match fsat::lstat_at(d, name)? {
            None => deleted.push(p.clone()),
            Some(st) => {
                if !equals_manifest(m, &st, d, name, &mut None)? {
                    modified.push(p.clone());
                }
            }
        }
    }
    modified.sort();
    modified.dedup();
    for s in &scope {
        collect_added(
            &mut dc,
            s,
            &|p| manifest.entries.contains_key(p),
            &mut added,
        )?;
    }
    let mut patches = BTreeMap::new();
    if patch && !modified.is_empty() {
        let last = LastSync::read(cfg)?;
        let img = match &last {
            Some(l) => image::by_digest(cfg, &l.digest)?,
            None => None,
        };
        match img {
            None => {
                patches.insert(
                    String::new(),
                    "the image last synced is no longer available: no patches\n".to_string(),
                );
            }
            Some(mut img) => {
                let mut notes = Vec::new();
                let tree = img.tree(&mut notes)?;
                let wanted: Vec<String> = modified
                    .iter()
                    .filter(|p| tree.get(*p).is_some_and(|e| e.kind == Kind::File))
                    .cloned()
                    .collect();
                let mut old_texts = HashMap::new();
                img.fetch(&wanted, &mut |rel, r| {
                    let mut buf = Vec::new();
                    r.take(8 << 20).read_to_end(&mut buf)?;
                    old_texts.insert(rel.to_string(), buf);
                    Ok(())
                })?;
                for p in &wanted {
                    let old = &old_texts[p];
                    let (parent, name) = fsat::split(p);
                    let Opened::Dir(d) = dc.open(parent)? else {
                        continue;
                    };
                    let new = read_at(d, name, 8 << 20)?;
                    match (std::str::from_utf8(old), std::str::from_utf8(&new)) {
                        (Ok(o), Ok(n)) => {
                            let text = similar::TextDiff::from_lines(o, n)
                                .unified_diff()
                                .header(&format!("image/{p}"), &format!("live/{p}"))
                                .to_string();
                            patches.insert(p.clone(), text);
                        }
                        _ => {
                            patches.insert(
                                p.clone(),
                                format!("Binary files image/{p} and live/{p} differ\n"),
                            );
                        }
                    }
                }
            }
        }
    }
    let differs = !(modified.is_empty() && added.is_empty() && deleted.is_empty());
    let out = if json {
        let mut v = json!({"modified": modified, "added": added, "deleted": deleted});
        if patch {
            v["patches"] = json!(patches);
        }
        format!("{v}\n")
    } else {
        let mut s = String::new();
        for p in &modified {
            let _ = writeln!(s, "M {p}");
        }
        for p in &added {
            let _ = writeln!(s, "A {p}");
        }
        for p in &deleted {
            let _ = writeln!(s, "D {p}");
        }
        for t in patches.values() {
            s.push_str(t);
        }
        s
    };
    Ok((out, differs))
}

/// Restores `paths` from the image the tree was last synced from: edits and deleted entries
/// come back, files engineers added there are removed; whatever differs is backed up first.
pub fn reset(cfg: &Config, paths: &[PathBuf]) -> Result<ComponentPlan> {
    let started = Instant::now();
    let scope = scope_of(cfg, paths)?;
    let last = LastSync::read(cfg)?.with_context(|| {
        format!(
            "reset: the tree {} was never synced; run `mw-experimental sync` first",
            cfg.code.path.display()
        )
    })?;
    recover(cfg)?;
    let mut img = image::by_digest(cfg, &last.digest)?.with_context(|| {
        format!(
            "reset: the image last synced ({} {}) is no longer available; run `mw-experimental sync` to move to the newest image, then reset",
            last.reference, last.digest
        )
    })?;
    let mut notes = Vec::new();
    let tree = img.tree(&mut notes)?;
    let old = Manifest::read(cfg)?;
    let eng = Engine::new(
        cfg,
        &img,
        tree,
        old,
        EngineOpts {
            force: true,
            dry_run: false,
            all_changed: true,
            scope,
            remove_added: true,
        },
        notes,
    )?;
    let out = eng.run()?;
    out.manifest.write(cfg)?;
    let _ = std::fs::remove_file(sync_dir(cfg).join("journal"));
    let mut plan = out.plan(started);
    plan.observed = last.observed();
    Ok(plan)
}

fn sync_dir(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("sync")
}

fn metrics(written: u64, kept: u64, started: Instant, files: u64) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("files_written".to_string(), written as f64),
        ("edits_kept".to_string(), kept as f64),
        (
            "duration_seconds".to_string(),
            started.elapsed().as_secs_f64(),
        ),
        ("files".to_string(), files as f64),
    ])
}

/// `diff`/`reset` arguments as relative paths in the tree (`""`: all of it).
fn scope_of(cfg: &Config, paths: &[PathBuf]) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(vec![String::new()]);
    }
    let mut out = Vec::new();
    for p in paths {
        let rel = if p.is_absolute() {
            p.strip_prefix(&cfg.code.path).map_err(|_| {
                anyhow::anyhow!(
                    "{} is not inside the code tree {}; give a path in it (absolute or relative to it)",
                    p.display(),
                    cfg.code.path.display()
                )
            })?
        } else {
            p.as_path()
        };
        let s = rel
            .to_str()
            .with_context(|| format!("{} is not valid UTF-8", p.display()))?;
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => {}
                ".." => bail!(
                    "{}: '..' is not allowed; give a path inside the tree",
                    p.display()
                ),
                c => parts.push(c),
            }
        }
        out.push(parts.join("/"));
    }
    Ok(out)
}

fn under(p: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || p == prefix
        || (p.len() > prefix.len() && p.starts_with(prefix) && p.as_bytes()[prefix.len()] == b'/')
}

fn in_scope(scope: &[String], p: &str) -> bool {
    scope.iter().any(|s| under(p, s))
}

/// Live entries below `s` that `known` does not know (an engineer's), parents only.
fn collect_added(
    dc: &mut DirCache,
    s: &str,
    known: &dyn Fn(&str) -> bool,
    out: &mut Vec<String>,
) -> Result<()> {
    let (dir, start_walk) = if s.is_empty() {
        (dc.root().try_clone_to_owned()?, true)
    } else {
        let (parent, name) = fsat::split(s);
        let Opened::Dir(d) = dc.open(parent)? else {
            return Ok(());
        };
        let Some(st) = fsat::lstat_at(d, name)? else {
            return Ok(());
        };
        if !known(s) {
            out.push(s.to_string());
            return Ok(());
        }
        if fsat::file_type(&st) != rustix::fs::FileType::Directory {
            return Ok(());
        }
        match fsat::open_dir_at(d, name) {
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

fn read_at(d: BorrowedFd<'_>, name: &str, limit: u64) -> Result<Vec<u8>> {
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

fn hash_at(d: BorrowedFd<'_>, name: &str) -> Result<[u8; 32]> {
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

fn kind_of(st: &Stat) -> Option<Kind> {
    match fsat::file_type(st) {
        rustix::fs::FileType::Directory => Some(Kind::Dir),
        rustix::fs::FileType::RegularFile => Some(Kind::File),
        rustix::fs::FileType::Symlink => Some(Kind::Symlink),
        _ => None,
    }
}

/// (inode, mtime ns, ctime ns) of a live entry: unchanged means untouched since we wrote it.
fn quick(st: &Stat) -> (u64, i64, i64) {
    (
        st.st_ino,
        st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
        st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
    )
}

fn readlink(d: BorrowedFd<'_>, name: &str) -> Result<String> {
    let t = rustix::fs::readlinkat(d, name, Vec::new())?;
    Ok(String::from_utf8_lossy(t.as_bytes()).into_owned())
}

/// Whether the live entry is what the manifest says we wrote (content, not permissions:
/// modes and ACLs belong to the permissions engine).
fn equals_manifest(
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

/// The last sync: what the unchanged-image check reads (small; the manifest is not parsed).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LastSync {
    reference: String,
    digest: String,
    synced_at: String,
    unix: u64,
    files: u64,
    local_edits: u64,
}

impl LastSync {
    fn path(cfg: &Config) -> PathBuf {
        sync_dir(cfg).join("last.json")
    }

    fn read(cfg: &Config) -> Result<Option<LastSync>> {
        let p = Self::path(cfg);
        match std::fs::read(&p) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    fn write(&self, cfg: &Config) -> Result<()> {
        let mut b = serde_json::to_vec_pretty(self)?;
        b.push(b'\n');
        crate::state::write_atomic(&Self::path(cfg), &b, 0o644)
    }

    fn observed(&self) -> serde_json::Value {
        json!({
            "image": self.reference,
            "digest": self.digest,
            "synced_at": self.synced_at,
            "files": self.files,
            "local_edits": self.local_edits,
        })
    }
}

/// One manifest line: the image entry as written, and the live stat right after writing.
#[derive(Clone, Debug)]
struct MEntry {
    e: Entry,
    live: (u64, i64, i64),
}

#[derive(Clone, Debug, Default)]
struct Manifest {
    entries: BTreeMap<String, MEntry>,
}

fn esc(s: &str, out: &mut String) {
    if !s.bytes().any(|b| b == b'\\' || b == b'\t' || b == b'\n') {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn unesc(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn hex(h: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

impl Manifest {
    const HEADER: &'static str = "# mw-experimental sync manifest v1: path kind mode size mtime.nsec blake3 target ino live_mtime_ns live_ctime_ns";

    fn path(cfg: &Config) -> PathBuf {
        sync_dir(cfg).join("manifest.tsv")
    }

    fn read(cfg: &Config) -> Result<Manifest> {
        let p = Self::path(cfg);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("reading the manifest {}", p.display()))
            }
        };
        // The file is written sorted: collect, then build the map in bulk.
        let mut entries = Vec::with_capacity(text.len() / 150);
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let parse = || -> Option<(String, MEntry)> {
                let mut f = [""; 10];
                let mut it = line.split('\t');
                for slot in f.iter_mut() {
                    *slot = it.next()?;
                }
                if it.next().is_some() {
                    return None;
                }
                let (mt, mn) = f[4].split_once('.')?;
                Some((
                    unesc(f[0]),
                    MEntry {
                        e: Entry {
                            kind: Kind::from_letter(f[1])?,
                            mode: u32::from_str_radix(f[2], 8).ok()?,
                            size: f[3].parse().ok()?,
                            mtime: mt.parse().ok()?,
                            mtime_nsec: mn.parse().ok()?,
                            hash: unhex(f[5]),
                            target: (!f[6].is_empty()).then(|| unesc(f[6])),
                        },
                        live: (f[7].parse().ok()?, f[8].parse().ok()?, f[9].parse().ok()?),
                    },
                ))
            };
            let (k, v) = parse().with_context(|| {
                format!(
                    "the manifest {} line {} is damaged; move it away and run `sync --force` (edits are backed up)",
                    p.display(),
                    i + 1
                )
            })?;
            entries.push((k, v));
        }
        Ok(Manifest {
            entries: entries.into_iter().collect(),
        })
    }

    fn write(&self, cfg: &Config) -> Result<()> {
        let mut s = String::with_capacity(self.entries.len() * 160);
        s.push_str(Self::HEADER);
        s.push('\n');
        for (p, m) in &self.entries {
            esc(p, &mut s);
            let _ = write!(
                s,
                "\t{}\t{:o}\t{}\t{}.{}\t{}\t",
                m.e.kind.letter(),
                m.e.mode,
                m.e.size,
                m.e.mtime,
                m.e.mtime_nsec,
                m.e.hash.as_ref().map(hex).unwrap_or_else(|| "-".into())
            );
            if let Some(t) = &m.e.target {
                esc(t, &mut s);
            }
            let _ = writeln!(s, "\t{}\t{}\t{}", m.live.0, m.live.1, m.live.2);
        }
        // Temp file and rename (a killed run leaves the old manifest whole). No fsync: after a
        // power cut an old or empty manifest only makes the next sync compare content (live
        // entries equal to the image are adopted, others are kept as edits), never lose data.
        let path = Self::path(cfg);
        let tmp = path.with_extension(format!("tsv.tmp.{}", std::process::id()));
        let r = std::fs::write(&tmp, s.as_bytes()).and_then(|()| std::fs::rename(&tmp, &path));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.with_context(|| format!("writing the manifest {}", path.display()))
    }
}

/// Removes the temp files a killed run left (listed in the journal), without walking the tree.
fn recover(cfg: &Config) -> Result<()> {
    let jp = sync_dir(cfg).join("journal");
    let text = match std::fs::read_to_string(&jp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", jp.display())),
    };
    let root = match fsat::open_dir_path(&cfg.code.path) {
        Ok(r) => r,
        Err(_) => {
            let _ = std::fs::remove_file(&jp);
            return Ok(());
        }
    };
    let mut dc = DirCache::new(root);
    let mut n = 0;
    for line in text.lines() {
        let Some(rel) = line.strip_prefix("tmp\t") else {
            continue;
        };
        let rel = unesc(rel);
        let (parent, name) = fsat::split(&rel);
        if !name.starts_with(".mwx-tmp.") {
            continue;
        }
        if let Opened::Dir(d) = dc.open(parent)? {
            if let Some(st) = fsat::lstat_at(d, name)? {
                if matches!(kind_of(&st), Some(Kind::File) | Some(Kind::Symlink))
                    && rustix::fs::unlinkat(d, name, AtFlags::empty()).is_ok()
                {
                    n += 1;
                }
            }
        }
    }
    if n > 0 {
        log::info!("removed {n} temporary file(s) left by an interrupted run");
    }
    std::fs::remove_file(&jp).with_context(|| format!("removing {}", jp.display()))?;
    Ok(())
}

struct EngineOpts {
    force: bool,
    dry_run: bool,
    /// Treat every path as changed in the image (force, reset): the live tree is compared.
    all_changed: bool,
    scope: Vec<String>,
    /// Remove live entries that are neither in the image nor the manifest (reset).
    remove_added: bool,
}

/// A file to write in the content phase, with the live state seen when deciding.
struct Pending {
    seen: Option<(u64, i64, i64, i64)>,
    backup: bool,
}

struct Engine<'a> {
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
    pending: BTreeMap<String, Pending>,
    counts: BTreeMap<&'static str, u64>,
    changes: Vec<Change>,
    notes: Vec<String>,
    kept: u64,
    kill_after: Option<u64>,
    steps: u64,
    progress: bool,
    pid: u32,
}

struct Outcome {
    manifest: Manifest,
    counts: BTreeMap<&'static str, u64>,
    changes: Vec<Change>,
    notes: Vec<String>,
    files: u64,
    kept: u64,
}

impl Outcome {
    fn plan(&self, started: Instant) -> ComponentPlan {
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
    fn new(
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
            progress: std::io::stderr().is_terminal(),
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
        if self.progress && self.steps % 2000 == 0 {
            eprint!(
                "\rsync: {} steps, {} written",
                self.steps, self.counts["written"]
            );
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
        let fd = match fsat::open_dir_path(path) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if !self.opts.dry_run => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("creating the code tree {}", path.display()))?;
                let fd = fsat::open_dir_path(path)?;
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

    fn backup(&mut self, rel: &str, d: BorrowedFd<'_>, name: &str, st: &Stat) -> Result<()> {
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

    fn temp_name(&self, name: &str) -> String {
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

    fn journal_tmp(&mut self, parent: &str, tmp: &str) -> Result<()> {
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

    fn run(mut self) -> Result<Outcome> {
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
            "phase 1 (deletions) done in {:.3}s",
            t0.elapsed().as_secs_f64()
        );
        // Phase 2: directories and symlinks in order; files decided and queued.
        let tree = std::mem::take(&mut self.tree);
        let mut blocked: Option<&str> = None;
        for (p, e) in &tree {
            if blocked.is_some_and(|b| under(p, b)) || !in_scope(&self.opts.scope, p) {
                continue;
            }
            if let Some(b) = self.decide(&mut dc, p, e.clone())? {
                // The prefix is p itself or one of its ancestors: all are keys of the tree
                // or prefixes of p.
                blocked = Some(&p[..b.len().min(p.len())]);
            }
        }
        self.tree = tree;
        log::debug!(
            "phase 2 (decisions) done in {:.3}s",
            t0.elapsed().as_secs_f64()
        );
        // Phase 3: file contents (layer order for layered images).
        let wanted: Vec<String> = self.pending.keys().cloned().collect();
        if !self.opts.dry_run && !wanted.is_empty() {
            let image = self.image;
            image.fetch(&wanted, &mut |rel, r| self.write_file(&mut dc, rel, r))?;
        } else {
            for p in &wanted {
                self.count("written");
                self.change("write", p, "dry run");
            }
        }
        log::debug!(
            "phase 3 (file contents) done in {:.3}s",
            t0.elapsed().as_secs_f64()
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
        if self.progress && self.steps >= 2000 {
            eprintln!();
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

    /// A path the image no longer has.
    fn delete(&mut self, dc: &mut DirCache, p: &str) -> Result<()> {
        let m = self.man.entries[p].clone();
        let (parent, name) = fsat::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(_) => {
                self.man.entries.remove(p);
                return Ok(());
            }
            Opened::Blocked(b) => {
                // When the image itself turned that directory into a file or symlink (and an
                // interrupted run already put it there), its old children are simply gone.
                if self.tree.get(&b).is_none_or(|e| e.kind == Kind::Dir) {
                    self.keep(p, &format!("{b} is a symlink or a file in the live tree"));
                }
                self.man.entries.remove(p);
                return Ok(());
            }
        };
        let Some(st) = fsat::lstat_at(d, name)? else {
            self.man.entries.remove(p);
            return Ok(());
        };
        let same = equals_manifest(&m, &st, d, name, &mut None)?;
        if !same && !self.opts.force {
            self.keep(p, "removed from the image but changed here");
            self.man.entries.remove(p);
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
        match rustix::fs::unlinkat(d, name, flags) {
            Ok(()) => {
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
        self.man.entries.remove(p);
        self.step();
        Ok(())
    }

    /// One path of the image. Returns a prefix to skip when the live tree blocks a subtree.
    fn decide(&mut self, dc: &mut DirCache, p: &str, mut e: Entry) -> Result<Option<String>> {
        let m = self.man.entries.get(p).cloned();
        if !self.opts.all_changed {
            if let Some(m) = &m {
                if self.same_in_image(p, &mut e, m)? {
                    if m.e != e {
                        self.man
                            .entries
                            .insert(p.to_string(), MEntry { e, live: m.live });
                    }
                    return Ok(None);
                }
            }
        }
        let (parent, name) = fsat::split(p);
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
        let st = fsat::lstat_at(d, name)?;
        let mut live_hash = None;
        let mut backup = false;
        if let Some(st) = &st {
            if self.equals_new(p, &mut e, st, d, name, &mut live_hash)? {
                // Already what the image has (an interrupted run's work, or the same edit).
                if !self.opts.dry_run {
                    self.apply_policy(d, name);
                }
                let live = fsat::lstat_at(d, name)?
                    .map(|s| quick(&s))
                    .unwrap_or_default();
                self.fill_hash(p, &mut e)?;
                self.man.entries.insert(p.to_string(), MEntry { e, live });
                return Ok(None);
            }
            let ours = match &m {
                Some(m) => equals_manifest(m, st, d, name, &mut live_hash)?,
                None => false,
            };
            if !ours {
                if !self.opts.force {
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
                self.pending
                    .insert(p.to_string(), Pending { seen: None, backup });
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
                    match rustix::fs::unlinkat(d, name, flags) {
                        Ok(()) => {
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
                    || !matches!(fsat::lstat_at(d, name)?, Some(ref s) if kind_of(s) == Some(Kind::Dir))
                {
                    match rustix::fs::mkdirat(d, name, Mode::from_raw_mode(e.mode & 0o777)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(err) => {
                            return Err(err).with_context(|| format!("creating the directory {p}"))
                        }
                    }
                    self.step();
                }
                self.finish_written(d, name, p, e, "mkdir", "")?;
            }
            Kind::Symlink => {
                let tmp = self.temp_name(name);
                self.journal_tmp(parent, &tmp)?;
                let _ = rustix::fs::unlinkat(d, tmp.as_str(), AtFlags::empty());
                let target = e.target.clone().unwrap_or_default();
                rustix::fs::symlinkat(target.as_str(), d, tmp.as_str())
                    .with_context(|| format!("creating the symlink {p}"))?;
                self.step();
                rustix::fs::renameat(d, tmp.as_str(), d, name)
                    .with_context(|| format!("renaming the symlink into place at {p}"))?;
                self.step();
                self.finish_written(d, name, p, e, "symlink", &target)?;
            }
            Kind::File => {
                let seen = fsat::lstat_at(d, name)?.map(|s| {
                    let q = quick(&s);
                    (q.0, q.1, q.2, s.st_size)
                });
                self.pending.insert(p.to_string(), Pending { seen, backup });
            }
        }
        Ok(None)
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

    fn fill_hash(&mut self, p: &str, e: &mut Entry) -> Result<()> {
        if e.kind == Kind::File && e.hash.is_none() {
            e.hash = Some(self.image.hash_file(p)?);
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

    /// Writes one file: temp file in the same directory, content, mode, mtime, rename.
    fn write_file(&mut self, dc: &mut DirCache, p: &str, r: &mut dyn Read) -> Result<()> {
        let Some(pending) = self.pending.remove(p) else {
            return Ok(());
        };
        let mut e = self.tree[p].clone();
        let (parent, name) = fsat::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(b) | Opened::Blocked(b) => {
                self.keep(p, &format!("{b} changed here while syncing"));
                return Ok(());
            }
        };
        let now = fsat::lstat_at(d, name)?;
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
        // A new name: an unnamed O_TMPFILE inode, linked in once complete (nothing to clean up
        // if the process dies). Replacing a name: a journaled temp name, then rename over it.
        let anon = if now.is_none() {
            rustix::fs::openat(
                d,
                ".",
                OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .ok()
        } else {
            None
        };
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
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        let copied = (|| -> Result<()> {
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
            rustix::fs::fchmod(&f, Mode::from_raw_mode(e.mode & 0o1777))?;
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
            )?;
            Ok(())
        })();
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
        drop(f);
        self.step();
        if let Some(t) = self.tree.get_mut(p) {
            t.hash = e.hash;
        }
        self.finish_written(d, name, p, e, "write", "")
    }

    /// After an entry is in place under its final name: the permissions policy, then the
    /// manifest records it with its live inode, mtime and ctime (the cheap "untouched since"
    /// check of the next run), and the report counts it.
    fn finish_written(
        &mut self,
        d: BorrowedFd<'_>,
        name: &str,
        p: &str,
        e: Entry,
        action: &str,
        detail: &str,
    ) -> Result<()> {
        self.apply_policy(d, name);
        let live = fsat::lstat_at(d, name)?
            .map(|s| quick(&s))
            .unwrap_or_default();
        self.count("written");
        self.change(action, p, detail);
        self.man.entries.insert(p.to_string(), MEntry { e, live });
        Ok(())
    }

    /// reset: removes an entry engineers added (backed up first), a directory with its content.
    fn remove_added(&mut self, dc: &mut DirCache, p: &str) -> Result<()> {
        let (parent, name) = fsat::split(p);
        let Opened::Dir(d) = dc.open(parent)? else {
            return Ok(());
        };
        let Some(st) = fsat::lstat_at(d, name)? else {
            return Ok(());
        };
        if kind_of(&st) == Some(Kind::Dir) {
            let sub = fsat::open_dir_at(d, name)?;
            let mut inner = Vec::new();
            Walk::default().serial(sub.as_fd(), p, &mut |e: &walk::Entry<'_>| {
                Ok(e.rel_utf8().map(|r| inner.push(r)).is_some())
            })?;
            let d2 = rustix::io::dup(d)?;
            self.backup(p, d2.as_fd(), name, &st)?;
            for q in inner.iter().rev() {
                let (qp, qn) = fsat::split(q);
                if let Opened::Dir(qd) = dc.open(qp)? {
                    if let Some(qs) = fsat::lstat_at(qd, qn)? {
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
