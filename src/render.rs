//! `render`: the Kubernetes Deployment/Service and X-Wikimedia-Debug routing entries that match
//! the node's labels and taints.

use crate::config::Config;
use anyhow::{bail, Result};

/// The YAML documents for `nodes` (NAME or NAME=HOST; empty: this node).
pub fn render(_cfg: &Config, _nodes: &[String]) -> Result<String> {
    bail!("not implemented yet: render")
}
