//! `render`: prints the Kubernetes objects and routing entries that [`crate::render`] derives
//! from the configuration. It only prints: it must never apply anything to a cluster.

use crate::config::Config;
use crate::exit_codes::ExitCode;
use anyhow::Result;

/// Prints the YAML documents for `nodes` (NAME or NAME=HOST; empty: this node).
pub fn render(cfg: &Config, nodes: &[String]) -> Result<ExitCode> {
    print!("{}", crate::render::render(cfg, nodes)?);
    Ok(ExitCode::Ok)
}
