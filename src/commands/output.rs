//! The report of component results that `plan`, `apply`, `sync` and `reset` print on stdout.
//!
//! Text first says per component whether it is converged or how much changed, then the bounded
//! sample of changes and the notes a person must read; `--json` gives one object for machines.
//! It only formats: it must never decide an exit code or change anything.

use crate::plan::{Component, ComponentPlan};
use anyhow::Result;
use serde_json::json;
use std::fmt::Write as _;

/// Prints a list of component results on stdout: text, or one JSON object.
pub fn print_plan_list(results: &[(Component, Result<ComponentPlan>)], json: bool, what: &str) {
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
