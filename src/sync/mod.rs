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
//! The same image digest as the last sync ends the run before the live tree is written. The
//! live tree is read whole only for the census of edits per editor ([`editors`], through
//! `diff`'s scan), after a sync that kept an edit or when the last census is 50 minutes old; a
//! sync into a missing or empty tree records no edits without a scan. Every
//! directory is opened from its parent's fd with `O_NOFOLLOW|O_DIRECTORY` ([`crate::fs::at`]): a
//! live path component that is a symlink or a file stops that subtree, reported. Temp files are
//! listed in `state_dir/sync/journal` before they are created, so the next run removes what a
//! killed run left without walking the tree.
//!
//! This folder: `mod.rs` holds the component's entry points (`check`, `apply`, `sync`) and the
//! small helpers its parts share; `manifest` the state files (manifest and last sync), `live`
//! the read-only comparisons of live entries, `engine` the writer, `recover` the journal
//! cleanup, `diff` and `reset` the two commands of that name, `editors` who last changed each
//! edit (the census of edits per editor that `sync` and `reset` record, for `status`, the banner
//! and the fact). Nothing here follows a symlink of the live tree or writes outside `code.path`
//! and `state_dir`.

use crate::config::Config;
use crate::fs::at;
use crate::image;
use crate::plan::{Change, ComponentPlan};
use anyhow::{bail, Context, Result};
use rustix::io::Errno;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

mod diff;
mod editors;
mod engine;
mod live;
mod manifest;
mod paths;
mod recover;
mod reset;

pub use diff::{diff, Whose};
use editors::Census;
pub use reset::reset;

use engine::{Engine, EngineOpts};
use manifest::LastSync;
use recover::recover;

#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    pub force: bool,
    pub dry_run: bool,
    /// Where the engine counts entries scanned and written, for a progress display.
    pub progress: crate::progress::Sink,
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
    let img = match image::wanted(cfg, false)? {
        image::Wanted::Present(img, _) => *img,
        image::Wanted::Missing(rel) => {
            plan.changes.push(Change::new(
                "pull",
                &rel.reference,
                format!(
                    "named by {}, not on this node yet: sync pulls it, then syncs it",
                    rel.file.display()
                ),
            ));
            plan.counts.insert("image".into(), 1);
            if let Some(l) = &last {
                plan.observed = l.observed();
            }
            return Ok(plan);
        }
    };
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
    let mut interrupted = false;
    if !opts.dry_run {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the sync state directory {}", dir.display()))?;
        interrupted = recover(cfg)?;
    }
    let last = LastSync::read(cfg)?;
    let (mut img, release) = image::wanted_present(cfg, !opts.dry_run)?;
    let release_file = release.map(|r| r.file.display().to_string());
    match &release_file {
        Some(f) => log::info!("image named by {f}: {} ({})", img.reference, img.digest),
        None => log::info!("newest image: {} ({})", img.reference, img.digest),
    }
    log::debug!(
        "found the newest image in {:.3}s (peak {} MiB)",
        started.elapsed().as_secs_f64(),
        crate::logging::peak_mib()
    );
    if let Some(l) = &last {
        // After an interrupted run the tree may be between two images: always go through it.
        if l.digest == img.digest && !opts.force && !interrupted {
            log::info!(
                "{} was synced at {}: nothing to do",
                l.reference,
                l.synced_at
            );
            let mut l = LastSync {
                release_file: release_file.clone(),
                ..l.clone()
            };
            if !opts.dry_run {
                // The same image (now or no longer named by a release file, say so), and the
                // edits engineers made since: who has edits here, for status and the banner.
                if census_due(l.edits.as_ref()) {
                    l.edits = count_edits(cfg).or(l.edits);
                }
                l.write(cfg)?;
            }
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
    // A first sync into an empty tree compares nothing with the image: a tree read from
    // snapshots then hashes each file as it writes it, not before (each is read once).
    let no_manifest = matches!(
        std::fs::symlink_metadata(manifest::Manifest::path(cfg)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    );
    if last.is_none() && no_manifest && tree_is_fresh(&cfg.code.path) {
        img.defer_hashes();
    }
    let mut notes = Vec::new();
    let tree = img.tree(&mut notes)?;
    log::debug!(
        "read the image tree by {:.3}s (peak {} MiB)",
        started.elapsed().as_secs_f64(),
        crate::logging::peak_mib()
    );
    if opts.dry_run && at::open_dir_path(&cfg.code.path).err() == Some(Errno::NOENT) {
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
    let mut eng = Engine::new(
        cfg,
        &img,
        tree,
        EngineOpts {
            force: opts.force,
            dry_run: opts.dry_run,
            all_changed: opts.force,
            scope: vec![String::new()],
            remove_added: false,
        },
        notes,
    )?;
    eng.progress = opts.progress.clone();
    eng.started = started;
    let out = eng.run()?;
    log::debug!(
        "synced the tree by {:.3}s (peak {} MiB)",
        started.elapsed().as_secs_f64(),
        crate::logging::peak_mib()
    );
    let mut plan = out.plan(started);
    if !opts.dry_run {
        let (at, unix) = crate::state::now();
        let l = LastSync {
            reference: img.reference.clone(),
            digest: img.digest.clone(),
            synced_at: at,
            unix,
            files: out.files,
            local_edits: out.kept,
            release_file,
            // Into a tree that was empty, every entry was just written: no edits, and no
            // scan. Otherwise the census is taken again when this sync kept an edit the new
            // image changes (news its editor should see). The periodic one (50 minutes) is
            // left to the unchanged-image syncs (the next event of the same deploy, or the
            // hourly timer): it reads every entry (4.6 s of an 8.4 s rebuilt-image sync at
            // 200k entries), which the sync that brings production's code should not add.
            // Only when none took it in twice that age (syncs by hand, the timer stopped) does
            // a new image's sync take it.
            edits: if out.fresh && out.kept == 0 {
                Some(Census::none())
            } else if out.kept > 0
                || census_older(
                    last.as_ref().and_then(|l| l.edits.as_ref()),
                    2 * CENSUS_MAX_AGE,
                )
            {
                count_edits(cfg)
            } else {
                last.as_ref().and_then(|l| l.edits.clone())
            },
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

/// How old the census may get before an unchanged-image sync takes it again: the scan reads
/// every entry, which an event-triggered sync that finds nothing to do should not pay each time
/// (the hourly backstop keeps the counts at most about this old).
const CENSUS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(50 * 60);

/// Whether an unchanged-image sync should count the edits again.
fn census_due(last: Option<&Census>) -> bool {
    census_older(last, CENSUS_MAX_AGE)
}

/// Whether the last census is missing, unreadable, or at least `age` old.
fn census_older(last: Option<&Census>, age: std::time::Duration) -> bool {
    let Some(c) = last else { return true };
    let Ok(at) = humantime::parse_rfc3339_weak(&c.counted_at) else {
        return true;
    };
    std::time::SystemTime::now()
        .duration_since(at)
        .map_or(true, |a| a >= age)
}

/// The census of edits per editor ([`diff::census`]); a failure is logged, not fatal: the sync
/// itself is done, and `diff` still lists the edits.
fn count_edits(cfg: &Config) -> Option<Census> {
    let started = Instant::now();
    match diff::census(cfg) {
        Ok(c) => {
            log::debug!(
                "counted {} edits by editor in {:.3}s",
                c.total,
                started.elapsed().as_secs_f64()
            );
            Some(c)
        }
        Err(e) => {
            log::warn!("counting the edits per editor: {e:#}");
            None
        }
    }
}

/// Whether the code tree is missing or an empty directory (not a symlink).
fn tree_is_fresh(path: &std::path::Path) -> bool {
    match at::open_dir_path(path) {
        Err(e) => e == Errno::NOENT,
        Ok(fd) => rustix::fs::Dir::read_from(&fd).is_ok_and(|mut d| {
            d.all(|e| e.is_ok_and(|e| matches!(e.file_name().to_bytes(), b"." | b"..")))
        }),
    }
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
