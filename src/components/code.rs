//! The `code` component: the code tree holds the newest image's files, engineers' edits kept.
//!
//! `plan code` and `apply code` reach the same engine that the timer's `sync` runs; the engine
//! (manifest, atomic writes, crash recovery) lives in [`crate::sync`]. This file is only the
//! component's face: it must never hold sync logic of its own, so that `apply code` and `sync`
//! can never differ. A hold ([`crate::hold`]) pauses both: nothing pending, nothing written, a
//! note saying who holds it, and what the last sync observed kept as it was.

use crate::config::Config;
use crate::plan::{Component, ComponentPlan};
use anyhow::Result;

/// What a sync would write, writing nothing.
pub fn check(cfg: &Config) -> Result<ComponentPlan> {
    if let Some(p) = held(cfg) {
        return Ok(p);
    }
    crate::sync::check(cfg)
}

/// Syncs; returns what it wrote.
pub fn apply(cfg: &Config) -> Result<ComponentPlan> {
    if let Some(p) = held(cfg) {
        return Ok(p);
    }
    crate::sync::apply(cfg)
}

/// The plan of a held refresh, when the switch is on and a hold is in force.
fn held(cfg: &Config) -> Option<ComponentPlan> {
    if !cfg.enabled {
        return None;
    }
    let spool = crate::hold::read(&cfg.state_dir);
    if !spool.is_held() {
        return None;
    }
    let last = crate::state::State::read(&cfg.state_file())
        .ok()
        .flatten()
        .and_then(|s| s.components.get(&Component::Code).cloned());
    let mut plan = ComponentPlan {
        notes: spool.active.iter().map(|h| h.describe()).collect(),
        ..Default::default()
    };
    plan.notes.extend(spool.ignored);
    if let Some(last) = last {
        plan.observed = last.plan.observed;
    }
    Some(plan)
}
