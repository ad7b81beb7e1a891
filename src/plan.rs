//! The plain data that components hand to the rest of the program: what a check found
//! (a [`ComponentPlan`] of [`Change`]s) and what an apply did.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The four things the tool converges, in the order `apply` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Group,
    Permissions,
    Node,
    Code,
}

impl Component {
    pub const ALL: [Component; 4] = [Self::Group, Self::Permissions, Self::Node, Self::Code];
    /// What `plan` and `apply` cover when no component is named. `code` is the timer's job
    /// (`sync`), so a Puppet run never waits on an image or depends on when one arrived.
    pub const DEFAULT: [Component; 3] = [Self::Group, Self::Permissions, Self::Node];

    pub fn name(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Permissions => "permissions",
            Self::Node => "node",
            Self::Code => "code",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing that differs from the policy, and what apply does (or did) about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// A short verb phrase: `create-group`, `add-member`, `set-acl`, `add-taint`, ...
    pub action: String,
    /// What it applies to: a group, a user, a path relative to the tree, a node.
    pub target: String,
    /// Human detail: from what to what.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Change {
    pub fn new(
        action: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Change {
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
        }
    }
}

/// What one component's check found, or what its apply did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ComponentPlan {
    /// The changes, listed. Large trees list a bounded sample; `counts` has the totals.
    pub changes: Vec<Change>,
    /// Total changes by kind (`acl`, `mode`, `group`, `label`, ...). Exact, never sampled.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    /// Things reported but not changed: missing users, skipped hard links, kept edits, symlinks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What was seen, for the fact and `status` (labels, members, image digest, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub observed: serde_json::Value,
    /// Numeric figures for the metrics file, e.g. `files_written` (exported as
    /// `mw_experimental_<component>_<name>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// How many changes and notes a report keeps; the exact totals stay in `counts`.
pub const SAMPLE: usize = 50;

impl ComponentPlan {
    /// Keeps at most `n` changes and notes, so the state file, the fact and the output stay
    /// small whatever the tree's size. The total stays exact: a component without `counts`
    /// gets `counts["changes"]` before its list is cut.
    pub fn bounded(mut self, n: usize) -> Self {
        if self.changes.len() > n {
            if self.counts.is_empty() {
                self.counts
                    .insert("changes".into(), self.changes.len() as u64);
            }
            self.changes.truncate(n);
        }
        if self.notes.len() > n {
            let more = self.notes.len() - n;
            self.notes.truncate(n);
            self.notes.push(format!("... and {more} more"));
        }
        self
    }

    /// Nothing to change (notes do not count: a missing user is reported, not pending).
    pub fn is_converged(&self) -> bool {
        self.changes.is_empty() && self.counts.values().all(|&n| n == 0)
    }

    /// Number of pending changes: the exact total from `counts` when a component keeps them.
    pub fn total(&self) -> u64 {
        if self.counts.is_empty() {
            self.changes.len() as u64
        } else {
            self.counts.values().sum()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_a_sample_and_the_exact_total() {
        let mut p = ComponentPlan::default();
        for i in 0..120 {
            p.changes.push(Change::new("write", format!("f{i}"), ""));
            p.notes.push(format!("note {i}"));
        }
        let b = p.bounded(50);
        assert_eq!(b.changes.len(), 50);
        assert_eq!(b.total(), 120, "the total stays exact");
        assert_eq!(b.notes.len(), 51);
        assert_eq!(b.notes[50], "... and 70 more");
        assert!(!b.is_converged());
    }

    #[test]
    fn bounded_leaves_small_plans_alone() {
        let mut p = ComponentPlan::default();
        p.changes.push(Change::new("add-member", "alice", ""));
        let b = p.clone().bounded(50);
        assert_eq!(b.changes, p.changes);
        assert!(b.counts.is_empty());
    }
}
