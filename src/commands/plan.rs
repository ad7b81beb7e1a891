//! `plan` and `apply`: check or converge the named components, and record what apply did.
//!
//! `plan` is Puppet's `unless` check: read-only, it must never write anything (no lock, no state,
//! no metrics). `apply` converges under the run lock, one component after another (one failing
//! does not stop the others), then writes the state file and metrics; [`record`] and [`finish`]
//! are shared with `sync`, so both runs record the same way.

use super::output::{print_plan_list, Style};
use crate::components::{check, converge_with_progress};
use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::metrics;
use crate::plan::{Component, ComponentPlan};
use crate::state::{self, ComponentState, Lock, Run, State};
use anyhow::Result;
use std::time::{Duration, Instant};

/// `plan`: 0 converged, 1 pending, 2 when any check failed. Read-only: writes nothing.
pub fn plan(cfg: &Config, components: &[Component], style: Style) -> Result<ExitCode> {
    let results: Vec<(Component, Result<ComponentPlan>)> =
        components.iter().map(|&c| (c, check(cfg, c))).collect();
    print_plan_list(&results, style, "plan");
    let mut code = ExitCode::Ok;
    for (c, r) in &results {
        match r {
            Err(e) => {
                log::error!("checking {c}: {e:#}");
                code = ExitCode::Error;
            }
            Ok(p) if !p.is_converged() && code == ExitCode::Ok => code = ExitCode::Pending,
            Ok(_) => {}
        }
    }
    Ok(code)
}

/// `apply`: converges each component in turn (one failing does not stop the others), records
/// what happened in the state and metrics, and exits 2 if any failed.
pub fn apply(
    cfg: &Config,
    components: &[Component],
    style: Style,
    lock_wait: Duration,
) -> Result<ExitCode> {
    let _lock = Lock::acquire(&cfg.state_dir, "apply", lock_wait)?;
    let started = Instant::now();
    let mut state = State::read_or_default(&cfg.state_file());
    state.enabled = cfg.enabled;
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for &c in components {
        let t = Instant::now();
        let (sink, display) = match c {
            Component::Permissions => super::progress::start("apply permissions", style.quiet),
            _ => (None, None),
        };
        let r = converge_with_progress(cfg, c, sink);
        drop(display);
        log::debug!("{c}: {:.2}s", t.elapsed().as_secs_f64());
        record(&mut state, c, &r);
        if let Err(e) = &r {
            log::error!("applying {c}: {e:#}");
            errors.push(format!("{c}: {e:#}"));
        }
        results.push((c, r));
    }
    state.last_apply = Some(Run::ended(
        started,
        (!errors.is_empty()).then(|| errors.join("; ")),
        components.to_vec(),
    ));
    finish(cfg, &mut state)?;
    print_plan_list(&results, style, "apply");
    Ok(if errors.is_empty() {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}

/// Puts one component's outcome into the state.
pub fn record(state: &mut State, c: Component, r: &Result<ComponentPlan>) {
    let (at, _) = state::now();
    let entry = match r {
        Ok(p) => ComponentState {
            at,
            converged: true,
            drift: p.counts.clone(),
            changed: p.total(),
            plan: p.clone(),
            error: None,
        },
        Err(e) => {
            // Keep what was last observed; mark it failed.
            let mut prev = state.components.remove(&c).unwrap_or_default();
            prev.at = at;
            prev.converged = false;
            prev.changed = 0;
            prev.error = Some(format!("{e:#}"));
            prev
        }
    };
    state.components.insert(c, entry);
}

/// Writes the state file, then the metrics (a metrics failure is only a warning).
pub fn finish(cfg: &Config, state: &mut State) -> Result<()> {
    state.write(&cfg.state_file())?;
    write_metrics(cfg, state);
    Ok(())
}

/// Rewrites the metrics file from `state` and the holds in force now; a failure is a warning.
pub fn write_metrics(cfg: &Config, state: &State) {
    let held = crate::hold::read(&cfg.state_dir).active.len();
    if let Err(e) = metrics::write(&cfg.metrics_file, state, cfg.enabled, held) {
        log::warn!(
            "writing the metrics file {}: {e:#}",
            cfg.metrics_file.display()
        );
    }
}
