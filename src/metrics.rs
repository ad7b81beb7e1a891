//! The Prometheus textfile (node-exporter's textfile collector): rewritten atomically after
//! every `apply` and `sync` from the state, so it always says what the state says (and, for
//! `sync_held`, what the hold spool says: a held sync rewrites only this file).

use crate::state::{write_atomic, Run, State};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

/// The textfile's content for `state`; `enabled` is the switch as configured now, `held` the
/// number of holds in force.
pub fn render(state: &State, enabled: bool, held: usize) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP mw_experimental_{name} {help}");
        let _ = writeln!(out, "# TYPE mw_experimental_{name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "mw_experimental_{name}{labels} {value}");
        }
    };
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    family(
        "enabled",
        "Whether the switch is on (1) or off (0).",
        &[(String::new(), b(enabled))],
    );
    let converged = state.converged(enabled);
    family(
        "converged",
        "Whether the node is converged, as the fact says: the last apply ran with the switch as it is now, succeeded, and left group, permissions and node converged.",
        &[(String::new(), b(converged))],
    );
    family(
        "sync_held",
        "Holds in force that pause the code refresh (mw-experimental hold); 0 when none.",
        &[(String::new(), held as f64)],
    );

    let comp: Vec<_> = state
        .components
        .iter()
        .map(|(c, s)| (format!("{{component=\"{c}\"}}"), b(s.converged)))
        .collect();
    family(
        "component_converged",
        "Whether the component was converged by its last run.",
        &comp,
    );
    let drift: Vec<_> = state
        .components
        .iter()
        .flat_map(|(c, s)| {
            s.drift
                .iter()
                .map(move |(k, n)| (format!("{{component=\"{c}\",kind=\"{k}\"}}"), *n as f64))
        })
        .collect();
    family(
        "component_drift",
        "Entries that differed from the policy before the last run fixed them, by kind.",
        &drift,
    );
    let changed: Vec<_> = state
        .components
        .iter()
        .map(|(c, s)| (format!("{{component=\"{c}\"}}"), s.changed as f64))
        .collect();
    family(
        "component_changes",
        "Changes the component's last run made.",
        &changed,
    );

    let runs: Vec<(&str, &Run)> = [("apply", &state.last_apply), ("sync", &state.last_sync)]
        .into_iter()
        .filter_map(|(n, r)| r.as_ref().map(|r| (n, r)))
        .collect();
    let per_run = |f: &dyn Fn(&Run) -> f64| -> Vec<(String, f64)> {
        runs.iter()
            .map(|(n, r)| (format!("{{command=\"{n}\"}}"), f(r)))
            .collect()
    };
    family(
        "last_run_timestamp_seconds",
        "When the command last ran (Unix time).",
        &per_run(&|r| r.unix as f64),
    );
    family(
        "last_run_success",
        "Whether the command's last run succeeded.",
        &per_run(&|r| b(r.result == "ok")),
    );
    family(
        "last_run_duration_seconds",
        "How long the command's last run took.",
        &per_run(&|r| r.duration_seconds),
    );

    // Each component's own figures (files written, edits kept, ...).
    for (c, s) in &state.components {
        for (name, value) in &s.plan.metrics {
            let metric = format!("{c}_{name}");
            family(
                &metric,
                &format!("{c}: {}", name.replace('_', " ")),
                &[(String::new(), *value)],
            );
        }
    }
    // The image the tree was last synced from, as an info metric (strings go in labels).
    if let Some(code) = state.components.get(&crate::plan::Component::Code) {
        let o = &code.plan.observed;
        if let (Some(image), Some(digest)) = (o["image"].as_str(), o["digest"].as_str()) {
            let esc = |v: &str| {
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            };
            let _ = writeln!(
                out,
                "# HELP mw_experimental_code_image_info The image the code tree was last synced from.\n\
                 # TYPE mw_experimental_code_image_info gauge\n\
                 mw_experimental_code_image_info{{image=\"{}\",digest=\"{}\"}} 1",
                esc(image),
                esc(digest)
            );
        }
    }
    out
}

/// Rewrites the metrics file atomically.
pub fn write(path: &Path, state: &State, enabled: bool, held: usize) -> Result<()> {
    write_atomic(path, render(state, enabled, held).as_bytes(), 0o644)
}
