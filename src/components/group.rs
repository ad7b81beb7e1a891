//! The `group` component: the deployer group exists with its fixed gid and listed members.
//!
//! The gid is fixed because ACL entries store numbers: a group renumbered behind our back would
//! silently hand the whole code tree to whoever gets the old gid. So a name that exists with
//! another gid, or the gid held by another name, is an error naming both, never a renumbering.
//!
//! Lookups go through the C library's user and group database (`getgrnam_r`, `getgrgid_r`,
//! `getpwnam_r` via nix), so they see exactly what the kernel's permission checks and `id` see,
//! whatever `nsswitch.conf` says; parsing `/etc/group` ourselves would miss other sources and
//! duplicate a parser. Changes go through `groupadd` and `gpasswd` (argv vectors, no shell),
//! which lock `/etc/group` and `/etc/gshadow` the way every other tool on the system expects.
//! Members not listed are left alone; users that do not exist are reported (notes, `observed`,
//! and so the state and the fact), not fatal and not pending. The group's members also get
//! their hold spool (`state_dir/holds`, root's and the group's, mode 3770; see [`crate::hold`]).

use crate::config::Config;
use crate::plan::{Change, ComponentPlan};
use anyhow::{bail, Context, Result};
use nix::unistd::User;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::Command;

/// What the system has now, compared with the configuration.
struct Seen {
    exists: bool,
    members: Vec<String>,
    to_add: Vec<String>,
    missing_users: Vec<String>,
}

fn look(cfg: &Config) -> Result<Seen> {
    let d = &cfg.deployers;
    let by_name = crate::accounts::deployer_group(cfg)?;
    let exists = by_name.is_some();
    let members = by_name.map(|g| g.mem).unwrap_or_default();
    let mut to_add = Vec::new();
    let mut missing_users = Vec::new();
    for m in &d.members {
        let user = User::from_name(m)
            .with_context(|| format!("looking up deployers member {m:?} in the user database"))?;
        if user.is_none() {
            missing_users.push(m.clone());
        } else if !members.contains(m) && !to_add.contains(m) {
            to_add.push(m.clone());
        }
    }
    Ok(Seen {
        exists,
        members,
        to_add,
        missing_users,
    })
}

fn plan_of(cfg: &Config, seen: &Seen, changes: Vec<Change>) -> ComponentPlan {
    let d = &cfg.deployers;
    let created = changes
        .iter()
        .filter(|c| c.action == "create-group")
        .count() as u64;
    let added = changes.iter().filter(|c| c.action == "add-member").count() as u64;
    let spool = changes.iter().filter(|c| c.action == "hold-spool").count() as u64;
    let notes = seen
        .missing_users
        .iter()
        .map(|u| {
            format!(
                "deployers member {u:?} does not exist on this host; it will be added once the user exists"
            )
        })
        .collect();
    ComponentPlan {
        changes,
        counts: BTreeMap::from([
            ("group".into(), created),
            ("member".into(), added),
            ("hold_spool".into(), spool),
        ]),
        notes,
        observed: json!({
            "group": d.group,
            "gid": d.gid,
            "exists": seen.exists,
            "members": seen.members,
            "missing_users": seen.missing_users,
        }),
        metrics: BTreeMap::from([
            ("members".into(), seen.members.len() as f64),
            ("missing_users".into(), seen.missing_users.len() as f64),
        ]),
    }
}

fn off(cfg: &Config) -> ComponentPlan {
    ComponentPlan {
        notes: vec![format!(
            "the switch is off: group {:?} is left as it is",
            cfg.deployers.group
        )],
        observed: json!({"enabled": false, "group": cfg.deployers.group, "gid": cfg.deployers.gid}),
        ..Default::default()
    }
}

fn pending(cfg: &Config, seen: &Seen) -> Vec<Change> {
    let d = &cfg.deployers;
    let mut changes = Vec::new();
    if !seen.exists {
        changes.push(Change::new(
            "create-group",
            &d.group,
            format!("gid {}", d.gid),
        ));
    }
    for u in &seen.to_add {
        changes.push(Change::new(
            "add-member",
            u,
            format!("to group {}", d.group),
        ));
    }
    changes
}

/// What apply would change.
pub fn check(cfg: &Config) -> Result<ComponentPlan> {
    if !cfg.enabled {
        return Ok(off(cfg));
    }
    let seen = look(cfg)?;
    let mut changes = pending(cfg, &seen);
    changes.extend(spool_pending(cfg)?);
    Ok(plan_of(cfg, &seen, changes))
}

/// The members' hold spool (`state_dir/holds`, root and the group, mode 3770): what differs.
fn spool_pending(cfg: &Config) -> Result<Vec<Change>> {
    let path = crate::hold::spool_dir(&cfg.state_dir);
    Ok(crate::hold::check_spool(&cfg.state_dir, cfg.deployers.gid)?
        .into_iter()
        .map(|what| Change::new("hold-spool", path.display().to_string(), what))
        .collect())
}

/// Converges; returns what it changed.
pub fn apply(cfg: &Config) -> Result<ComponentPlan> {
    if !cfg.enabled {
        return Ok(off(cfg));
    }
    let d = &cfg.deployers;
    let seen = look(cfg)?;
    let mut changes = pending(cfg, &seen);
    for c in &changes {
        match c.action.as_str() {
            "create-group" => run(Command::new("groupadd")
                .arg("-g")
                .arg(d.gid.to_string())
                .arg("--")
                .arg(&d.group))
            .with_context(|| format!("creating group {:?} with gid {}", d.group, d.gid))?,
            _ => run(Command::new("gpasswd")
                .arg("-a")
                .arg(&c.target)
                .arg(&d.group))
            .with_context(|| format!("adding user {:?} to group {:?}", c.target, d.group))?,
        }
    }
    // The spool after the group: holds are for its members.
    changes.extend(
        crate::hold::ensure_spool(&cfg.state_dir, d.gid)?
            .into_iter()
            .map(|what| {
                Change::new(
                    "hold-spool",
                    crate::hold::spool_dir(&cfg.state_dir).display().to_string(),
                    what,
                )
            }),
    );
    // Report what the system says now.
    let after = look(cfg)?;
    Ok(plan_of(cfg, &after, changes))
}

/// Runs a system tool (argv, no shell); its output goes to the log, failures carry it.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, text.trim());
    }
    if !text.trim().is_empty() {
        log::info!("{}", text.trim());
    }
    Ok(())
}
