//! `sync`: the timer's run, refreshing the code tree from the newest image.
//!
//! With the switch off it must never touch the tree. A hold ([`crate::hold`]) ends the run at
//! once, exit 0, before the lock or the image is touched: it writes nothing but the metrics file
//! (so `mw_experimental_sync_held` says why nothing moves), and `--force` does not override it.
//! Otherwise it runs the sync engine ([`crate::sync`]) under the run lock and records the outcome
//! in the state and metrics, except for `--dry-run`, which must write nothing at all (no state,
//! no metrics). On a terminal it shows progress on stderr.

use super::output::{print_plan_list, Style};
use super::plan::{finish, record, write_metrics};
use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::plan::{Component, SAMPLE};
use crate::state::{Lock, Run, State};
use anyhow::Result;
use serde_json::json;
use std::time::{Duration, Instant};

/// Runs `sync`; exit 0 ok (also when the switch is off or a hold pauses it), 2 error.
pub fn run_sync(
    cfg: &Config,
    mut opts: crate::sync::SyncOptions,
    style: Style,
    lock_wait: Duration,
) -> Result<ExitCode> {
    if !cfg.enabled {
        log::info!(
            "the switch is off: sync leaves {} as it is",
            cfg.code.path.display()
        );
        if style.json {
            println!("{}", json!({"enabled": false, "synced": false}));
        }
        return Ok(ExitCode::Ok);
    }
    let spool = crate::hold::read(&cfg.state_dir);
    for why in &spool.ignored {
        log::warn!("{why}");
    }
    if spool.is_held() {
        return held(cfg, &spool, style, opts.dry_run);
    }
    let _lock = Lock::acquire(&cfg.state_dir, "sync", lock_wait)?;
    let started = Instant::now();
    let (sink, display) = super::progress::start("sync", style.quiet);
    opts.progress = sink;
    let r = crate::sync::sync(cfg, &opts).map(|p| p.bounded(SAMPLE));
    drop(display);
    if opts.dry_run {
        let failed = r.is_err();
        print_plan_list(&[(Component::Code, r)], style, "sync --dry-run");
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
    print_plan_list(&[(Component::Code, r)], style, "sync");
    Ok(if failed {
        ExitCode::Error
    } else {
        ExitCode::Ok
    })
}

/// A held run: says who holds it and why (stdout, and the journal under systemd), refreshes
/// only the metrics, writes nothing else.
fn held(cfg: &Config, spool: &crate::hold::Spool, style: Style, dry_run: bool) -> Result<ExitCode> {
    for h in &spool.active {
        log::info!("sync {}; nothing written", h.describe());
    }
    if !dry_run {
        write_metrics(cfg, &State::read_or_default(&cfg.state_file()));
    }
    if style.json {
        println!(
            "{}",
            json!({"command": "sync", "held": true, "holds": spool.active, "holds_ignored": spool.ignored})
        );
    } else {
        println!(
            "sync: {} hold{} in force, nothing written ({:.2}s)",
            spool.active.len(),
            if spool.active.len() == 1 { "" } else { "s" },
            style.started.elapsed().as_secs_f64()
        );
        for h in &spool.active {
            println!("  {}", h.describe());
        }
        for why in &spool.ignored {
            println!("  {why}");
        }
    }
    Ok(ExitCode::Ok)
}
