//! `sync`: the timer's run, refreshing the code tree from the newest image.
//!
//! With the switch off it must never touch the tree. Otherwise it runs the sync engine
//! ([`crate::sync`]) under the run lock and records the outcome in the state and metrics, except
//! for `--dry-run`, which must write nothing at all (no state, no metrics).

use super::output::print_plan_list;
use super::plan::{finish, record};
use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::plan::{Component, SAMPLE};
use crate::state::{Lock, Run, State};
use anyhow::Result;
use serde_json::json;
use std::time::{Duration, Instant};

/// Runs `sync`; exit 0 ok (also when the switch is off), 2 error.
pub fn run_sync(
    cfg: &Config,
    opts: &crate::sync::SyncOptions,
    json: bool,
    lock_wait: Duration,
) -> Result<ExitCode> {
    if !cfg.enabled {
        log::info!(
            "the switch is off: sync leaves {} as it is",
            cfg.code.path.display()
        );
        if json {
            println!("{}", json!({"enabled": false, "synced": false}));
        }
        return Ok(ExitCode::Ok);
    }
    let _lock = Lock::acquire(&cfg.state_dir, "sync", lock_wait)?;
    let started = Instant::now();
    let r = crate::sync::sync(cfg, opts).map(|p| p.bounded(SAMPLE));
    if opts.dry_run {
        let failed = r.is_err();
        print_plan_list(&[(Component::Code, r)], json, "sync --dry-run");
        return Ok(if failed {
            ExitCode::Error
        } else {
            ExitCode::Ok
        });
    }
    let mut state = State::read_or_default(&cfg.state_file());
    record(&mut state, Component::Code, &r);
    state.last_sync = Some(Run::ended(
        started,
        r.as_ref().err().map(|e| format!("{e:#}")),
        vec![Component::Code],
    ));
    finish(cfg, &mut state)?;
    let failed = r.is_err();
    if let Err(e) = &r {
        log::error!("sync: {e:#}");
    }
    print_plan_list(&[(Component::Code, r)], json, "sync");
    Ok(if failed {
        ExitCode::Error
    } else {
        ExitCode::Ok
    })
}
