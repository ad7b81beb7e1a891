//! `mw-experimental reset`: restores paths from the image the tree was last synced from, through
//! the engine with force (whatever differs is backed up first) and removing what engineers added
//! in scope (the engine's last phase). It must never move the tree to another image than the one
//! last synced: when that image is gone, it stops and says to run `sync` first.

use super::engine::{Engine, EngineOpts};
use super::manifest::LastSync;
use super::recover::recover;
use super::{scope_of, sync_dir};
use crate::config::Config;
use crate::image;
use crate::plan::ComponentPlan;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;

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
    let eng = Engine::new(
        cfg,
        &img,
        tree,
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
    let _ = std::fs::remove_file(sync_dir(cfg).join("journal"));
    let mut plan = out.plan(started);
    // The edits per editor changed with the reset: count them again.
    let last = LastSync {
        edits: super::count_edits(cfg).or(last.edits),
        ..last
    };
    last.write(cfg)?;
    plan.observed = last.observed();
    Ok(plan)
}
