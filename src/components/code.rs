//! The `code` component: the code tree holds the newest image's files, engineers' edits kept.
//!
//! `plan code` and `apply code` reach the same engine that the timer's `sync` runs; the engine
//! (manifest, atomic writes, crash recovery) lives in [`crate::sync`]. This file is only the
//! component's face: it must never hold sync logic of its own, so that `apply code` and `sync`
//! can never differ.

use crate::config::Config;
use crate::plan::ComponentPlan;
use anyhow::Result;

/// What a sync would write, writing nothing.
pub fn check(cfg: &Config) -> Result<ComponentPlan> {
    crate::sync::check(cfg)
}

/// Syncs; returns what it wrote.
pub fn apply(cfg: &Config) -> Result<ComponentPlan> {
    crate::sync::apply(cfg)
}
