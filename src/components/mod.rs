//! The four components of DESIGN.md (`group`, `permissions`, `node`, `code`), each a `check`
//! (what apply would change, read-only) and an `apply` (converge, report what changed).
//!
//! This is the layer that knows the policy; it uses capabilities (`sync`, `kube`, `image`, the
//! filesystem primitives) and returns plain [`ComponentPlan`]s. It must never print, take a lock,
//! or write the state or metrics: that is the commands' job, so `plan`, `apply` and the fact see
//! one definition of each component.

pub mod code;
pub mod group;
pub mod node;
pub mod permissions;

use crate::config::Config;
use crate::plan::{Component, ComponentPlan, SAMPLE};
use anyhow::{bail, Result};

/// The components named on the command line, deduplicated and in their fixed order; none named:
/// the default set (`group permissions node`).
pub fn parse_components(names: &[String]) -> Result<Vec<Component>> {
    if names.is_empty() {
        return Ok(Component::DEFAULT.to_vec());
    }
    let mut out = Vec::new();
    for n in names {
        let Some(c) = Component::parse(n) else {
            bail!("unknown component {n:?}: choose from group, permissions, node, code");
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.sort();
    Ok(out)
}

/// What applying `c` would change; writes nothing. The report is bounded to a sample.
pub fn check(cfg: &Config, c: Component) -> Result<ComponentPlan> {
    let plan = match c {
        Component::Group => group::check(cfg),
        Component::Permissions => permissions::check(cfg),
        Component::Node => node::check(cfg),
        Component::Code => code::check(cfg),
    };
    plan.map(|p| p.bounded(SAMPLE))
}

/// Converges `c`; returns what it changed, bounded to a sample.
pub fn converge(cfg: &Config, c: Component) -> Result<ComponentPlan> {
    converge_with_progress(cfg, c, None)
}

/// [`converge`], counting the long walks' progress (permissions) into `progress`.
pub fn converge_with_progress(
    cfg: &Config,
    c: Component,
    progress: crate::progress::Sink,
) -> Result<ComponentPlan> {
    let done = match c {
        Component::Group => group::apply(cfg),
        Component::Permissions => permissions::apply_with_progress(cfg, progress),
        Component::Node => node::apply(cfg),
        Component::Code => code::apply(cfg),
    };
    done.map(|p| p.bounded(SAMPLE))
}
