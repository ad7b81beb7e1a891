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
use crate::config::{Config, ImageSource};
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
    let r = settle(cfg, &opts);
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

/// Most rounds of [`settle`] in one run.
const MAX_ROUNDS: u32 = 3;

/// Syncs, then asks whether the wanted image is still the one just synced, and syncs again if
/// not (at most [`MAX_ROUNDS`] in all). systemd does not watch a path unit's paths while the
/// unit it started runs, so a release file replaced, or an image pulled, during a sync would
/// otherwise wait for the hourly timer. The look costs a listing and a manifest read; the
/// directory source, which has no such triggers and whose look is a scan, is not asked.
fn settle(cfg: &Config, opts: &crate::sync::SyncOptions) -> Result<crate::plan::ComponentPlan> {
    let mut round = 1;
    loop {
        let plan = crate::sync::sync(cfg, opts)?.bounded(SAMPLE);
        if opts.dry_run || round >= MAX_ROUNDS || cfg.image.source == ImageSource::Directory {
            return Ok(plan);
        }
        match crate::sync::check(cfg) {
            Ok(next) if !next.changes.is_empty() => {
                log::info!(
                    "the wanted image changed while the sync ran ({} {}); syncing again",
                    next.changes[0].target,
                    next.changes[0].detail
                );
                round += 1;
            }
            Ok(_) => return Ok(plan),
            Err(e) => {
                log::warn!("checking whether the image changed during the sync: {e:#}");
                return Ok(plan);
            }
        }
    }
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
