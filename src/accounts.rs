//! The system's user and group database, as the kernel's permission checks and `id` see it
//! (`getgrnam_r`, `getgrgid_r`, `getpwnam_r` through nix, so whatever `nsswitch.conf` says).
//!
//! Two layers need the same answer: the `group` component (which creates the group) and the
//! permission policy (which must never grant the tree to a gid that some other group holds).
//! So the lookup lives here, below both. It only reads; it never changes the database.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Group};

/// The configured group as the system knows it: `None` when neither the name nor the gid
/// exists yet. A name with another gid, or the gid under another name, is an error naming both.
/// The permissions component calls this too, so it never grants the tree to a gid that belongs
/// to some other group.
pub fn deployer_group(cfg: &Config) -> Result<Option<Group>> {
    let d = &cfg.deployers;
    let by_name = Group::from_name(&d.group)
        .with_context(|| format!("looking up group {:?} in the group database", d.group))?;
    let by_gid = Group::from_gid(Gid::from_raw(d.gid))
        .with_context(|| format!("looking up gid {} in the group database", d.gid))?;
    if let Some(g) = &by_name {
        if g.gid.as_raw() != d.gid {
            bail!(
                "group {:?} exists with gid {}, but deployers.gid is {}; it is never renumbered \
                 (files and ACLs store the number). Set deployers.gid to {} or renumber the \
                 group by hand (groupmod -g) and fix the files that carry the old gid",
                d.group,
                g.gid,
                d.gid,
                g.gid
            );
        }
    } else if let Some(other) = &by_gid {
        bail!(
            "gid {} is held by group {:?}, not by deployers.group {:?}; nothing was changed. \
             Choose a free deployers.gid, or rename that group by hand if it is the same one \
             (groupmod -n {} {})",
            d.gid,
            other.name,
            d.group,
            d.group,
            other.name
        );
    }
    Ok(by_name)
}

/// The name of `uid` in the user database; `None` when it has none (a removed user).
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The uid of `name` in the user database, when it exists.
pub fn user_uid(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// The engineer running this command, for `diff --mine` and the banner's greeting: the real
/// uid; for root, the uid that ran `sudo` (`SUDO_UID`), or `None` for root itself. `SUDO_UID`
/// is read only when the real uid is root, so nobody else can claim to be someone else with it.
pub fn caller() -> Option<u32> {
    let uid = rustix::process::getuid().as_raw();
    if uid != 0 {
        return Some(uid);
    }
    std::env::var("SUDO_UID")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&u| u != 0)
}
