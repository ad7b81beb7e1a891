//! The `permissions` component: owner, group, mode and POSIX ACLs over the code tree.

use crate::config::Config;
use crate::plan::ComponentPlan;
use anyhow::{bail, Result};
use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

/// The resolved policy (uids and gids looked up), for the walk and for `sync`.
#[derive(Clone, Debug)]
pub struct Policy {
    pub root: std::path::PathBuf,
    pub owner_uid: u32,
    pub gid: u32,
    pub root_mode: u32,
}

impl Policy {
    pub fn from_config(_cfg: &Config) -> Result<Policy> {
        bail!("not implemented yet: permissions")
    }
}

/// Applies the policy to the one entry `name` in the directory `dir` (used by `sync` for the
/// entries it writes). Never follows a symlink; skips hard-linked files.
pub fn fix_at(_policy: &Policy, _dir: BorrowedFd<'_>, _name: &OsStr) -> Result<()> {
    bail!("not implemented yet: permissions")
}

/// What apply would change.
pub fn check(_cfg: &Config) -> Result<ComponentPlan> {
    bail!("not implemented yet: permissions")
}

/// Converges; returns what it changed.
pub fn apply(_cfg: &Config) -> Result<ComponentPlan> {
    bail!("not implemented yet: permissions")
}
