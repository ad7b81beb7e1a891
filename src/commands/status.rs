//! `status`: a short human overview for engineers, from the configuration and the state file.
//!
//! It reads the state file and nothing else (no tree walk, no kubectl, no image), so it is
//! instant and safe to run at any time; it must never write. `--json` prints the fact, which is
//! the same data for machines.

use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::state::State;
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

/// Prints the overview, or with `json` the fact (read with `config_path` as the fact reads it).
pub fn status(cfg: &Config, config_path: Option<&Path>, json: bool) -> Result<ExitCode> {
    let state = State::read(&cfg.state_file())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&crate::facts::fact(config_path))?
        );
    } else {
        print!("{}", render(cfg, state.as_ref()));
    }
    Ok(ExitCode::Ok)
}

/// The overview as text.
fn render(cfg: &Config, state: Option<&State>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "switch:      {}",
        if cfg.enabled { "on" } else { "off" }
    );
    let _ = writeln!(out, "code tree:   {}", cfg.code.path.display());
    let Some(state) = state else {
        let _ = writeln!(
            out,
            "state:       none yet ({}): run `mw-experimental apply`",
            cfg.state_file().display()
        );
        return out;
    };
    match state.why_not_converged(cfg.enabled) {
        None => {
            let _ = writeln!(out, "converged:   yes");
        }
        Some(why) => {
            let _ = writeln!(out, "converged:   no: {why}");
        }
    }
    for (name, run) in [
        ("last apply", &state.last_apply),
        ("last sync", &state.last_sync),
    ] {
        match run {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "{name:<12} {} {} ({:.1}s){}",
                    r.at,
                    r.result,
                    r.duration_seconds,
                    r.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
            None => {
                let _ = writeln!(out, "{name:<12} never");
            }
        }
    }
    for (c, s) in &state.components {
        let verdict = match (&s.error, s.converged) {
            (Some(e), _) => format!("error: {e}"),
            (None, true) => "converged".to_string(),
            (None, false) => "not converged".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<12} {verdict} (at {}, {} changed)",
            format!("{c}:"),
            s.at,
            s.changed
        );
        let counts: Vec<String> = s
            .drift
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        if !counts.is_empty() {
            let _ = writeln!(out, "             {}", counts.join(", "));
        }
        let o = &s.plan.observed;
        if let (Some(image), Some(tag)) = (o["image"].as_str(), o["tag"].as_str()) {
            let _ = match o["release_file"].as_str() {
                Some(f) => writeln!(out, "             follows {f}: tag {tag} ({image})"),
                None => writeln!(
                    out,
                    "             follows the newest image: tag {tag} ({image})"
                ),
            };
        }
        for note in s.plan.notes.iter().take(10) {
            let _ = writeln!(out, "             note: {note}");
        }
        if s.plan.notes.len() > 10 {
            let _ = writeln!(
                out,
                "             ... and {} more notes (--json for all)",
                s.plan.notes.len() - 10
            );
        }
    }
    out
}
