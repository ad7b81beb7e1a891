//! The `group` component: the deployer group exists with its fixed gid and listed members.

use crate::config::Config;
use crate::plan::ComponentPlan;
use anyhow::{bail, Result};

/// What apply would change.
pub fn check(_cfg: &Config) -> Result<ComponentPlan> {
    bail!("not implemented yet: group")
}

/// Converges; returns what it changed.
pub fn apply(_cfg: &Config) -> Result<ComponentPlan> {
    bail!("not implemented yet: group")
}
