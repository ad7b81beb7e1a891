//! Runs a parsed command line: loads the configuration, runs the components, records the state
//! and metrics, prints data on stdout and returns the exit code.

use crate::cli::{Cli, Command};
use crate::components::{check, converge, parse_components};
use crate::config::{self, Config};
use crate::exit_codes::ExitCode;
use crate::plan::{Component, ComponentPlan, SAMPLE};
use crate::state::{self, ComponentState, Lock, Run, State};
use crate::{facts, metrics, render, status, sync};
use anyhow::{Context, Result};
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `cli`. Errors are returned for `main` to print once, with their whole chain.
pub fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Facts = cli.command {
        return Ok(print_fact(cli.config.as_deref()));
    }
    if let Command::Generate { what } = &cli.command {
        crate::commands::generate::generate(what)?;
        return Ok(ExitCode::Ok);
    }
    let cfg = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Facts | Command::Generate { .. } => unreachable!(),
        Command::Config => {
            let out = if cli.json {
                serde_json::to_string_pretty(&cfg)? + "\n"
            } else {
                serde_saphyr::to_string(&cfg).context("printing the configuration as YAML")?
            };
            print!("{out}");
            Ok(ExitCode::Ok)
        }
        Command::Plan { components } => plan(&cfg, &parse_components(&components)?, cli.json),
        Command::Apply {
            components,
            lock_wait,
        } => apply(
            &cfg,
            &parse_components(&components)?,
            cli.json,
            Duration::from_secs(lock_wait),
        ),
        Command::Sync {
            force,
            dry_run,
            lock_wait,
        } => {
            let opts = sync::SyncOptions { force, dry_run };
            run_sync(&cfg, &opts, cli.json, Duration::from_secs(lock_wait))
        }
        Command::Status => {
            let state = State::read(&cfg.state_file())?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&facts::fact(cli.config.as_deref()))?
                );
            } else {
                print!("{}", status::render(&cfg, state.as_ref()));
            }
            Ok(ExitCode::Ok)
        }
        Command::Diff { paths, patch } => {
            let (out, differs) = sync::diff(&cfg, &paths, patch, cli.json)?;
            print!("{out}");
            Ok(if differs {
                ExitCode::Pending
            } else {
                ExitCode::Ok
            })
        }
        Command::Reset { paths, lock_wait } => {
            let _lock = Lock::acquire(&cfg.state_dir, "reset", Duration::from_secs(lock_wait))?;
            let done = sync::reset(&cfg, &paths)?.bounded(SAMPLE);
            print_plan_list(&[(Component::Code, Ok(done))], cli.json, "reset");
            Ok(ExitCode::Ok)
        }
        Command::Render { nodes } => {
            print!("{}", render::render(&cfg, &nodes)?);
            Ok(ExitCode::Ok)
        }
    }
}

/// The fact never fails: whatever happens, Facter gets one JSON object.
fn print_fact(config: Option<&Path>) -> ExitCode {
    let fact = facts::fact(config);
    println!(
        "{}",
        serde_json::to_string(&fact)
            .unwrap_or_else(|_| "{\"mw_experimental\":{\"state\":\"unknown\"}}".into())
    );
    ExitCode::Ok
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Config::load(p, true),
        None => Config::load(Path::new(config::DEFAULT_PATH), false),
    }
}

/// `plan`: 0 converged, 1 pending, 2 when any check failed. Read-only: writes nothing.
fn plan(cfg: &Config, components: &[Component], json: bool) -> Result<ExitCode> {
    let results: Vec<(Component, Result<ComponentPlan>)> =
        components.iter().map(|&c| (c, check(cfg, c))).collect();
    print_plan_list(&results, json, "plan");
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
fn apply(
    cfg: &Config,
    components: &[Component],
    json: bool,
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
        let r = converge(cfg, c);
        log::debug!("{c}: {:.2}s", t.elapsed().as_secs_f64());
        record(&mut state, c, &r);
        if let Err(e) = &r {
            log::error!("applying {c}: {e:#}");
            errors.push(format!("{c}: {e:#}"));
        }
        results.push((c, r));
    }
    let (at, unix) = state::now();
    state.last_apply = Some(Run {
        at,
        unix,
        duration_seconds: started.elapsed().as_secs_f64(),
        result: if errors.is_empty() { "ok" } else { "error" }.into(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        components: components.to_vec(),
    });
    finish(cfg, &mut state)?;
    print_plan_list(&results, json, "apply");
    Ok(if errors.is_empty() {
        ExitCode::Ok
    } else {
        ExitCode::Error
    })
}

fn run_sync(
    cfg: &Config,
    opts: &sync::SyncOptions,
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
    let r = sync::sync(cfg, opts).map(|p| p.bounded(SAMPLE));
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
    let (at, unix) = state::now();
    state.last_sync = Some(Run {
        at,
        unix,
        duration_seconds: started.elapsed().as_secs_f64(),
        result: if r.is_ok() { "ok" } else { "error" }.into(),
        error: r.as_ref().err().map(|e| format!("{e:#}")),
        components: vec![Component::Code],
    });
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

/// Puts one component's outcome into the state.
fn record(state: &mut State, c: Component, r: &Result<ComponentPlan>) {
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

fn finish(cfg: &Config, state: &mut State) -> Result<()> {
    state.write(&cfg.state_file())?;
    if let Err(e) = metrics::write(&cfg.metrics_file, state, cfg.enabled) {
        log::warn!(
            "writing the metrics file {}: {e:#}",
            cfg.metrics_file.display()
        );
    }
    Ok(())
}

/// Prints a list of component results on stdout: text, or one JSON object.
fn print_plan_list(results: &[(Component, Result<ComponentPlan>)], json: bool, what: &str) {
    if json {
        let mut comps = serde_json::Map::new();
        let mut all = true;
        for (c, r) in results {
            let v = match r {
                Ok(p) => {
                    all &= p.is_converged();
                    let mut v = serde_json::to_value(p).unwrap_or_default();
                    v["converged"] = json!(p.is_converged());
                    v
                }
                Err(e) => {
                    all = false;
                    json!({"converged": false, "error": format!("{e:#}")})
                }
            };
            comps.insert(c.name().into(), v);
        }
        println!(
            "{}",
            json!({"command": what, "converged": all, "components": comps})
        );
        return;
    }
    let mut out = String::new();
    for (c, r) in results {
        match r {
            Err(e) => {
                let _ = writeln!(out, "{c}: error: {e:#}");
            }
            Ok(p) if p.is_converged() => {
                let _ = writeln!(
                    out,
                    "{c}: {}",
                    if what == "plan" {
                        "converged"
                    } else {
                        "nothing to change"
                    }
                );
                for n in &p.notes {
                    let _ = writeln!(out, "  note: {n}");
                }
            }
            Ok(p) => {
                let verb = if what == "plan" { "pending" } else { "changed" };
                let _ = writeln!(out, "{c}: {} {verb}", p.total());
                for (k, n) in &p.counts {
                    if *n > 0 {
                        let _ = writeln!(out, "  {n} {k}");
                    }
                }
                for ch in &p.changes {
                    let _ = writeln!(
                        out,
                        "  {} {}{}",
                        ch.action,
                        ch.target,
                        if ch.detail.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", ch.detail)
                        }
                    );
                }
                let listed = p.changes.len() as u64;
                if p.total() > listed {
                    let _ = writeln!(
                        out,
                        "  ... and {} more (counts above are exact)",
                        p.total() - listed
                    );
                }
                for n in &p.notes {
                    let _ = writeln!(out, "  note: {n}");
                }
            }
        }
    }
    print!("{out}");
}
