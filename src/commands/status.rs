//! `status`: a short human overview for engineers, from the configuration and the state file.
//!
//! It reads the state file and the hold spool, and for the code two more things an engineer
//! asks: whether a newer image than the tree's is on the node (the image source's listing) and
//! when the timer runs next (`systemctl show`, only where systemd runs). It never walks the tree,
//! never calls kubectl, and must never write. A summary line comes first. `--json` prints the
//! fact, which is the same data for machines.

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
        let spool = crate::hold::read(&cfg.state_dir);
        let mut text = summary(cfg, state.as_ref(), &spool);
        text.push_str(&render(cfg, state.as_ref()));
        text.push_str(&code(cfg, state.as_ref(), &spool));
        print!("{text}");
    }
    Ok(ExitCode::Ok)
}

/// What the last sync observed of the code tree (image, digest, synced_at, local_edits).
fn observed(state: Option<&State>) -> Option<&serde_json::Value> {
    state
        .and_then(|s| s.components.get(&crate::plan::Component::Code))
        .map(|c| &c.plan.observed)
        .filter(|o| o["image"].is_string())
}

/// The first line: the switch, convergence, the code's image, edits, a failed last sync, holds.
fn summary(cfg: &Config, state: Option<&State>, spool: &crate::hold::Spool) -> String {
    let mut parts = vec![format!("switch {}", if cfg.enabled { "on" } else { "off" })];
    if let Some(s) = state {
        parts.push(
            if s.converged(cfg.enabled) {
                "converged"
            } else {
                "not converged"
            }
            .into(),
        );
    }
    match observed(state) {
        Some(o) => {
            parts.push(format!(
                "code at {}",
                crate::motd::describe_image(o["image"].as_str().unwrap_or_default())
            ));
            // The census of every edit when the last sync took one; else the edits it kept.
            let edits = o["edits"]["total"]
                .as_u64()
                .or(o["local_edits"].as_u64())
                .unwrap_or(0);
            parts.push(format!(
                "{edits} local edit{}",
                if edits == 1 { "" } else { "s" }
            ));
        }
        None => parts.push("code never synced".into()),
    }
    // A failed last sync leaves the tree at the image above: say so on the first line too.
    if state
        .and_then(|s| s.last_sync.as_ref())
        .is_some_and(|r| r.result != "ok")
    {
        parts.push("last sync failed".into());
    }
    parts.push(match spool.active.len() {
        0 => "not held".into(),
        n => format!("held ({n} hold{})", if n == 1 { "" } else { "s" }),
    });
    format!("status: {}\n", parts.join(", "))
}

/// The code section: image and sync time, a newer image, edits, holds, the next timer run.
fn code(cfg: &Config, state: Option<&State>, spool: &crate::hold::Spool) -> String {
    let mut out = String::new();
    let o = observed(state);
    if let Some(o) = o {
        let _ = writeln!(
            out,
            "code image:  {}, synced {}",
            crate::motd::describe_image(o["image"].as_str().unwrap_or_default()),
            o["synced_at"].as_str().unwrap_or("at an unknown time")
        );
    }
    if cfg.enabled {
        match crate::image::newest(cfg) {
            Ok(img) if o.is_some_and(|o| o["digest"].as_str() == Some(&img.digest)) => {}
            Ok(img) => {
                let _ = writeln!(
                    out,
                    "newer image: {} is on the node; {}",
                    crate::motd::describe_image(&img.reference),
                    if spool.is_held() {
                        "the sync takes it once released"
                    } else {
                        "the next sync takes it"
                    }
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "newer image: unknown ({e:#}){}",
                    if rustix::process::geteuid().is_root() {
                        ""
                    } else {
                        "; root can read the image source"
                    }
                );
            }
        }
    }
    if let Some(o) = o {
        let edits = o["local_edits"].as_u64().unwrap_or(0);
        let kept: Vec<&str> = state
            .and_then(|s| s.components.get(&crate::plan::Component::Code))
            .map(|c| {
                c.plan
                    .notes
                    .iter()
                    .filter_map(|n| n.strip_prefix("kept ")?.split(':').next())
                    .take(5)
                    .collect()
            })
            .unwrap_or_default();
        let census = &o["edits"];
        if census.is_object() {
            let total = census["total"].as_u64().unwrap_or(0);
            let mut line = format!(
                "edits:       {total} as of {}",
                census["counted_at"].as_str().unwrap_or("an unknown time")
            );
            if total > 0 {
                let _ = write!(line, ", by editor: {}", crate::motd::per_editor(census));
            }
            if let Some(uid) = crate::accounts::caller() {
                let _ = write!(line, "; yours: {}", crate::motd::own_edits(census, uid).0);
            }
            let _ = writeln!(
                out,
                "{line}; `mw-experimental diff` lists every edit, `diff --mine` yours"
            );
        }
        let paths = if kept.is_empty() {
            String::new()
        } else {
            format!(
                " ({}{})",
                kept.join(", "),
                if edits as usize > kept.len() {
                    ", ..."
                } else {
                    ""
                }
            )
        };
        if !census.is_object() {
            let _ = writeln!(
                out,
                "edits:       {edits} kept by the last sync{paths}; `mw-experimental diff` lists every edit"
            );
        } else if edits > 0 {
            let _ = writeln!(
                out,
                "kept:        {edits} edit{} kept where the last new image changed the file{paths}",
                if edits == 1 { "" } else { "s" }
            );
        }
    }
    out_rest(out, spool)
}

/// The end of the code section: holds and the next timer run.
fn out_rest(mut out: String, spool: &crate::hold::Spool) -> String {
    if spool.active.is_empty() {
        let _ = writeln!(out, "holds:       none");
    }
    for h in &spool.active {
        let _ = writeln!(out, "holds:       {}", h.describe());
    }
    for why in &spool.ignored {
        let _ = writeln!(out, "holds:       {why}");
    }
    if let Some(next) = next_timer_run() {
        let _ = writeln!(out, "next sync:   {next} (mw-experimental-sync.timer)");
    }
    out
}

/// When systemd runs the sync timer next, as `systemctl show` says; `None` without systemd or
/// when the timer is not scheduled.
fn next_timer_run() -> Option<String> {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let out = std::process::Command::new("systemctl")
        .args([
            "show",
            "--property=NextElapseUSecRealtime",
            "--value",
            "mw-experimental-sync.timer",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let next = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !next.is_empty() && next != "n/a").then_some(next)
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
