//! `hold` and `release`: a deployer pauses and resumes the code refresh, without root.
//!
//! These run with the caller's own credentials: they write only the caller's file in the hold
//! spool ([`crate::hold`]) and never take the run lock or touch the state, the tree or the
//! metrics, which are root's. `release --all` is root's: it clears every entry of the spool.

use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::hold::{self, Hold};
use anyhow::{bail, Result};
use serde_json::json;
use std::time::Duration;

/// `hold`: places (or replaces) the caller's hold.
pub fn hold(cfg: &Config, reason: &str, duration: Duration, json: bool) -> Result<ExitCode> {
    let h = hold::hold(&cfg.state_dir, &cfg.deployers.group, reason, duration)?;
    let spool = hold::read(&cfg.state_dir);
    let others: Vec<&Hold> = spool.active.iter().filter(|o| o.uid != h.uid).collect();
    if json {
        println!(
            "{}",
            json!({"command": "hold", "hold": h, "holds": spool.active})
        );
        return Ok(ExitCode::Ok);
    }
    println!(
        "hold: the code refresh is {} ({}); `mw-experimental release` resumes it",
        h.describe(),
        humantime::format_duration(duration)
    );
    for o in others {
        println!("  also {}", o.describe());
    }
    if !cfg.enabled {
        println!("  note: the switch is off, so there is no refresh to hold right now");
    }
    Ok(ExitCode::Ok)
}

/// `release`: removes the caller's hold; with `all` (root only) every entry of the spool.
pub fn release(cfg: &Config, all: bool, json: bool) -> Result<ExitCode> {
    if all {
        if !rustix::process::geteuid().is_root() {
            bail!("release --all removes other people's holds: run it as root (sudo mw-experimental release --all)");
        }
        let (removed, failed) = hold::release_all(&cfg.state_dir)?;
        for r in &removed {
            log::info!("release --all: removed {r}");
        }
        if json {
            println!(
                "{}",
                json!({"command": "release", "removed": removed, "failed": failed})
            );
        } else {
            println!(
                "release: removed {} entr{} of the hold spool{}",
                removed.len(),
                if removed.len() == 1 { "y" } else { "ies" },
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(", {} could not be removed", failed.len())
                }
            );
            for r in &removed {
                println!("  removed {r}");
            }
            for f in &failed {
                println!("  error: {f}");
            }
        }
        return Ok(if failed.is_empty() {
            ExitCode::Ok
        } else {
            ExitCode::Error
        });
    }
    let had = hold::release(&cfg.state_dir, &cfg.deployers.group)?;
    let spool = hold::read(&cfg.state_dir);
    if json {
        println!(
            "{}",
            json!({"command": "release", "released": had, "holds": spool.active})
        );
        return Ok(ExitCode::Ok);
    }
    let me = hold::user_name(rustix::process::geteuid().as_raw());
    let head = if had {
        format!("release: removed the hold of {me}")
    } else {
        format!("release: {me} had no hold")
    };
    if spool.active.is_empty() {
        println!("{head}; nothing holds the code refresh now");
    } else {
        println!(
            "{head}; the code refresh stays held by {} other hold{}:",
            spool.active.len(),
            if spool.active.len() == 1 { "" } else { "s" }
        );
        for o in &spool.active {
            println!("  {}", o.describe());
        }
    }
    Ok(ExitCode::Ok)
}
