//! The report of component results that `plan`, `apply`, `sync` and `reset` print on stdout.
//!
//! Text is for people: one summary line first (what happened, exact counts, how long it took),
//! then what a person must act on, always in full (errors, notes such as kept edits); the paths
//! that were changed are listed, grouped by what was done, only with `-v` or when there are at
//! most [`SHORT`]. `--json` gives one object for machines, unchanged. It only formats: it must
//! never decide an exit code or change anything.

use crate::plan::{Component, ComponentPlan};
use anyhow::Result;
use serde_json::json;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// At most this many changes are listed without `-v`.
pub const SHORT: u64 = 10;

/// How a command prints: the global flags, and when it started (for the summary's duration).
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// `--json`: one object on stdout instead of text.
    pub json: bool,
    /// `-v`: list the changed paths (the bounded sample) whatever their number.
    pub verbose: bool,
    /// `-q`: no progress on stderr.
    pub quiet: bool,
    pub started: Instant,
}

/// Prints a list of component results on stdout: text, or one JSON object.
pub fn print_plan_list(results: &[(Component, Result<ComponentPlan>)], style: Style, what: &str) {
    let elapsed = style.started.elapsed();
    if style.json {
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
    print!("{}", render(results, style.verbose, what, elapsed));
}

/// "4981 written, 1 kept edit": a plan's non-zero counts in words.
fn counts_in_words(p: &ComponentPlan) -> String {
    let mut counts: Vec<(&String, &u64)> = p.counts.iter().filter(|(_, n)| **n > 0).collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = counts
        .into_iter()
        .map(|(k, n)| {
            let word = k.replace('_', " ");
            match word.strip_suffix('s') {
                Some(one) if *n == 1 => format!("1 {one}"),
                _ => format!("{n} {word}"),
            }
        })
        .collect();
    if parts.is_empty() {
        format!("{} changes", p.total())
    } else {
        parts.join(", ")
    }
}

/// The text report.
pub fn render(
    results: &[(Component, Result<ComponentPlan>)],
    verbose: bool,
    what: &str,
    elapsed: Duration,
) -> String {
    let plan = what == "plan" || what.ends_with("--dry-run");
    let mut parts = Vec::new();
    for (c, r) in results {
        parts.push(match r {
            Err(_) => format!("{c} failed"),
            Ok(p) if p.is_converged() => {
                format!("{c} {}", if plan { "converged" } else { "unchanged" })
            }
            Ok(p) => format!(
                "{c}: {}{}",
                counts_in_words(p),
                if plan { " pending" } else { "" }
            ),
        });
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{what}: {} ({:.2}s)",
        parts.join("; "),
        elapsed.as_secs_f64()
    );
    let mut hidden = 0u64;
    for (c, r) in results {
        let p = match r {
            Err(e) => {
                let _ = writeln!(out, "  {c}: error: {e:#}");
                continue;
            }
            Ok(p) => p,
        };
        if !p.changes.is_empty() && (verbose || p.total() <= SHORT) {
            // Grouped by what was done, in the order first seen.
            let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
            for ch in &p.changes {
                let item = if ch.detail.is_empty() {
                    ch.target.clone()
                } else {
                    format!("{} ({})", ch.target, ch.detail)
                };
                match groups.iter_mut().find(|(a, _)| *a == ch.action) {
                    Some((_, v)) => v.push(item),
                    None => groups.push((&ch.action, vec![item])),
                }
            }
            for (action, items) in groups {
                if verbose {
                    let _ = writeln!(out, "  {c} {action} ({}):", items.len());
                    for i in items {
                        let _ = writeln!(out, "    {i}");
                    }
                } else {
                    let _ = writeln!(out, "  {c} {action}: {}", items.join(", "));
                }
            }
            let listed = p.changes.len() as u64;
            if p.total() > listed {
                let _ = writeln!(
                    out,
                    "  ... and {} more (the counts above are exact; --json has the same sample)",
                    p.total() - listed
                );
            }
        } else if !p.changes.is_empty() {
            hidden += p.total();
        }
        for n in &p.notes {
            let _ = writeln!(out, "  {c}: {n}");
        }
    }
    if hidden > 0 {
        let _ = writeln!(
            out,
            "  (-v lists the {hidden} changed paths, up to a sample of 50 per component)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Change;

    fn big() -> ComponentPlan {
        let mut p = ComponentPlan::default();
        for i in 0..50 {
            p.changes
                .push(Change::new("write", format!("php/f{i}.php"), ""));
        }
        p.counts.insert("written".into(), 4981);
        p.counts.insert("kept_edits".into(), 1);
        p.notes
            .push("kept Auth1/Http4/specials0.php: edited since the last sync".into());
        p
    }

    #[test]
    fn a_large_change_is_a_summary_the_kept_edits_and_a_hint() {
        let text = render(
            &[(Component::Code, Ok(big()))],
            false,
            "sync",
            Duration::from_millis(1234),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "sync: code: 4981 written, 1 kept edit (1.23s)");
        assert!(
            lines[1].contains("kept Auth1/Http4/specials0.php"),
            "{text}"
        );
        assert!(lines[2].contains("-v lists"), "{text}");
        assert_eq!(lines.len(), 3, "{text}");
    }

    #[test]
    fn verbose_lists_the_sample_grouped() {
        let text = render(
            &[(Component::Code, Ok(big()))],
            true,
            "sync",
            Duration::ZERO,
        );
        assert!(
            text.contains("  code write (50):\n    php/f0.php\n"),
            "{text}"
        );
        assert!(text.contains("... and 4932 more"), "{text}");
    }

    #[test]
    fn a_short_list_is_one_line_per_kind() {
        let mut p = ComponentPlan::default();
        p.changes.push(Change::new("add-member", "alice", ""));
        p.changes.push(Change::new("add-member", "bob", ""));
        let text = render(
            &[
                (Component::Group, Ok(p)),
                (Component::Node, Ok(ComponentPlan::default())),
            ],
            false,
            "plan",
            Duration::ZERO,
        );
        assert_eq!(
            text,
            "plan: group: 2 changes pending; node converged (0.00s)\n  group add-member: alice, bob\n"
        );
    }
}
