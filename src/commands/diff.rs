//! `diff` and `reset`: engineers' edits against the image the tree was last synced from, and
//! restoring paths from it.
//!
//! `diff` is read-only: it must never write anything and exits 1 when something differs.
//! `reset` writes only under the run lock, and only through the sync engine, which backs every
//! replaced file up first. Both are thin: the work is in [`crate::sync`].

use super::output::{print_plan_list, Style};
use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::plan::{Component, SAMPLE};
use crate::state::{Lock, State};
use crate::sync::Whose;
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

/// `diff`: prints the differences; exit 0 none, 1 some.
/// With `mine`, only the caller's edits ([`crate::accounts::caller`]); root without sudo has no
/// edits of its own to pick, so it sees every edit, and is told so.
pub fn diff(
    cfg: &Config,
    paths: &[PathBuf],
    mine: bool,
    patch: bool,
    stat: bool,
    json: bool,
) -> Result<ExitCode> {
    let whose = match (mine, crate::accounts::caller()) {
        (false, _) => Whose::All,
        (true, Some(uid)) => Whose::Uid(uid),
        (true, None) => {
            log::warn!(
                "diff --mine as root (not through sudo): listing every edit; run it as yourself to see yours"
            );
            Whose::All
        }
    };
    let (out, differs) = crate::sync::diff(cfg, paths, whose, patch, stat, json)?;
    print!("{out}");
    Ok(if differs {
        ExitCode::Pending
    } else {
        ExitCode::Ok
    })
}

/// `reset`: restores `paths` from the image (each backed up first) and reports what it wrote.
pub fn reset(
    cfg: &Config,
    paths: &[PathBuf],
    style: Style,
    lock_wait: Duration,
) -> Result<ExitCode> {
    let _lock = Lock::acquire(&cfg.state_dir, "reset", lock_wait)?;
    let done = crate::sync::reset(cfg, paths)?.bounded(SAMPLE);
    // The edits per editor changed: the state (status, the banner, the fact) says so now,
    // not at the next sync. Only that field of the code component's record is replaced.
    let mut state = State::read_or_default(&cfg.state_file());
    if let Some(code) = state.components.get_mut(&Component::Code) {
        if code.plan.observed.is_object() && done.observed["edits"].is_object() {
            code.plan.observed["edits"] = done.observed["edits"].clone();
            state.write(&cfg.state_file())?;
        }
    }
    print_plan_list(&[(Component::Code, Ok(done))], style, "reset");
    Ok(ExitCode::Ok)
}
