//! The `node` component: the managed labels and taints on this host's Node object, via kubectl.

use crate::config::Config;
use crate::plan::ComponentPlan;
use anyhow::{bail, Result};

/// What apply would change.
pub fn check(_cfg: &Config) -> Result<ComponentPlan> {
    bail!("not implemented yet: node")
}

/// Converges; returns what it changed.
pub fn apply(_cfg: &Config) -> Result<ComponentPlan> {
    bail!("not implemented yet: node")
}
