//! The `code` component: keep the tree current from the newest image, keeping engineers' edits.

use crate::config::Config;
use crate::plan::ComponentPlan;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    pub force: bool,
    pub dry_run: bool,
}

/// What a sync would change (is the tree at the newest image?).
pub fn check(_cfg: &Config) -> Result<ComponentPlan> {
    bail!("not implemented yet: code")
}

/// Sync, keeping edits (apply's path for the `code` component).
pub fn apply(cfg: &Config) -> Result<ComponentPlan> {
    sync(cfg, &SyncOptions::default())
}

pub fn sync(_cfg: &Config, _opts: &SyncOptions) -> Result<ComponentPlan> {
    bail!("not implemented yet: sync")
}

/// Engineers' edits. Returns the report for stdout (text or JSON per `json`) and whether any
/// edit was found.
pub fn diff(
    _cfg: &Config,
    _paths: &[PathBuf],
    _patch: bool,
    _json: bool,
) -> Result<(String, bool)> {
    bail!("not implemented yet: diff")
}

pub fn reset(_cfg: &Config, _paths: &[PathBuf]) -> Result<ComponentPlan> {
    bail!("not implemented yet: reset")
}
