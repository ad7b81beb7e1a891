//! The `node` component: the managed labels and taints on this host's Node object.
//!
//! Kubelet flags (`--node-labels`, `--register-with-taints`) act only when a node registers, and
//! the NodeRestriction admission plugin forbids a kubelet to change its own taints, so the switch
//! must act on the Node object through the API server, with an operator's kubeconfig; the real
//! `kubectl` runs through [`crate::kube`], which bounds each run and the whole component. This
//! module is the policy only: what differs, the patch that fixes it, what the fact shows. It must
//! never touch a label or taint it does not manage.
//!
//! Convergence is one read and at most one write: `kubectl get node NAME -o json`, then, only if
//! something differs, one `kubectl patch node NAME --type=merge` that carries the label changes
//! (`null` deletes) and the whole resulting taint list, guarded by the `resourceVersion` that was
//! read. A JSON merge patch replaces lists whole, and so does a strategic merge patch for
//! `spec.taints` (it has no patch merge key); without the guard, a taint that someone else (the
//! node lifecycle controller, an operator) added between our read and our write would be lost.
//! With it the API server answers 409 Conflict instead, and we read again and retry.

use crate::config::{Config, Taint};
use crate::kube::{self, Hints, Kubectl, Ran};
use crate::plan::{Change, ComponentPlan};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// How often a write that lost a race (409 Conflict) is retried after a fresh read.
const CONFLICT_RETRIES: u32 = 2;

/// How many `timeout_seconds` the whole component may take: a read, a write, and a retry after
/// a conflict fit; a Puppet run never waits longer than this on the API server.
const BUDGET_TIMEOUTS: u32 = 3;

/// What apply would change.
pub fn check(cfg: &Config) -> Result<ComponentPlan> {
    let name = node_name(cfg)?;
    let kubectl = Kubectl::new(cfg, "the node component", BUDGET_TIMEOUTS);
    let node = get_node(&kubectl, &name)?;
    let drift = Drift::compute(cfg, &node);
    Ok(drift.plan(cfg, &name, &node))
}

/// Converges; returns what it changed.
pub fn apply(cfg: &Config) -> Result<ComponentPlan> {
    let name = node_name(cfg)?;
    let kubectl = Kubectl::new(cfg, "the node component", BUDGET_TIMEOUTS);
    let mut attempt = 0;
    loop {
        let node = get_node(&kubectl, &name)?;
        let drift = Drift::compute(cfg, &node);
        if drift.is_empty() {
            return Ok(drift.plan(cfg, &name, &node));
        }
        let patch = drift.patch(&node);
        match patch_node(&kubectl, &name, &patch)? {
            Patched::Conflict(why) if attempt < CONFLICT_RETRIES => {
                attempt += 1;
                log::info!("node {name}: the Node changed while we wrote it ({why}); reading it again");
            }
            Patched::Conflict(why) => bail!(
                "patching Node {name}: it kept changing under us ({} attempts; last: {why}); run apply again",
                attempt + 1
            ),
            Patched::Done(after) => {
                let left = Drift::compute(cfg, &after);
                if !left.is_empty() {
                    bail!(
                        "patching Node {name}: the API server accepted the patch but the Node still differs ({}); an admission webhook or controller may be rewriting it",
                        left.summary()
                    );
                }
                // What changed, and the Node as the API server now holds it.
                return Ok(drift.plan(cfg, &name, &after));
            }
        }
    }
}

/// The Node's name: configured, or the kubelet's default. Checked again here because it becomes
/// an argument of kubectl: it must never look like a flag.
fn node_name(cfg: &Config) -> Result<String> {
    let name = cfg.node_name()?;
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !ok {
        bail!(
            "the Node name {name:?} (from this host's name) is not a valid Kubernetes node name; set node_name in the configuration"
        );
    }
    Ok(name)
}

/// A taint as `(key, value, effect)`, the way Kubernetes compares them (`timeAdded` aside).
fn taint_of(v: &Value) -> (String, String, String) {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (s("key"), s("value"), s("effect"))
}

fn taint_string(key: &str, value: &str, effect: &str) -> String {
    if value.is_empty() {
        format!("{key}:{effect}")
    } else {
        format!("{key}={value}:{effect}")
    }
}

fn managed_taint_value(t: &Taint) -> Value {
    let mut v = json!({"key": t.key, "effect": t.effect});
    if !t.value.is_empty() {
        v["value"] = json!(t.value);
    }
    v
}

/// What differs between the Node and the policy, and the result the patch must produce.
struct Drift {
    /// Label key -> new value (`None`: delete).
    labels: BTreeMap<String, Option<String>>,
    /// The whole new taint list, when it differs from the current one.
    taints: Option<Vec<Value>>,
    changes: Vec<Change>,
    notes: Vec<String>,
    label_changes: u64,
    taint_changes: u64,
}

impl Drift {
    fn compute(cfg: &Config, node: &Value) -> Drift {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let empty = Map::new();
        let labels = node["metadata"]["labels"].as_object().unwrap_or(&empty);
        let current: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut d = Drift {
            labels: BTreeMap::new(),
            taints: None,
            changes: Vec::new(),
            notes: Vec::new(),
            label_changes: 0,
            taint_changes: 0,
        };
        for (k, want) in &cfg.kubernetes.labels {
            let have = labels.get(k).and_then(Value::as_str);
            if cfg.enabled {
                if have != Some(want.as_str()) {
                    let detail = match have {
                        Some(old) => format!("{k}={want} (was {k}={old})"),
                        None => format!("{k}={want}"),
                    };
                    d.labels.insert(k.clone(), Some(want.clone()));
                    d.changes.push(Change::new("set-label", name, detail));
                    d.label_changes += 1;
                }
            } else {
                match have {
                    Some(v) if v == want => {
                        d.labels.insert(k.clone(), None);
                        d.changes
                            .push(Change::new("remove-label", name, format!("{k}={want}")));
                        d.label_changes += 1;
                    }
                    Some(other) => d.notes.push(format!(
                        "label {k}={other} is not the managed value {want}: left as it is"
                    )),
                    None => {}
                }
            }
        }
        let mut next = current.clone();
        for t in &cfg.kubernetes.taints {
            let same_slot = next.iter().position(|c| {
                let (k, _, e) = taint_of(c);
                k == t.key && e == t.effect
            });
            let exact =
                |c: &Value| taint_of(c) == (t.key.clone(), t.value.clone(), t.effect.clone());
            let want = taint_string(&t.key, &t.value, &t.effect);
            if cfg.enabled {
                match same_slot {
                    Some(i) if exact(&next[i]) => {}
                    Some(i) => {
                        // Kubernetes keeps one taint per key and effect: ours takes the slot.
                        let (k, v, e) = taint_of(&next[i]);
                        d.changes.push(Change::new(
                            "set-taint",
                            name,
                            format!("{want} (was {})", taint_string(&k, &v, &e)),
                        ));
                        next[i] = managed_taint_value(t);
                        d.taint_changes += 1;
                    }
                    None => {
                        d.changes.push(Change::new("add-taint", name, want));
                        next.push(managed_taint_value(t));
                        d.taint_changes += 1;
                    }
                }
            } else if let Some(i) = same_slot.filter(|&i| exact(&next[i])) {
                d.changes.push(Change::new("remove-taint", name, want));
                next.remove(i);
                d.taint_changes += 1;
            }
        }
        if next != current {
            d.taints = Some(next);
        }
        d
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.taints.is_none()
    }

    fn summary(&self) -> String {
        self.changes
            .iter()
            .map(|c| format!("{} {}", c.action, c.detail))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The JSON merge patch: label changes, the whole taint list, and the resourceVersion read.
    fn patch(&self, node: &Value) -> Value {
        let mut patch = json!({"metadata": {
            "resourceVersion": node["metadata"]["resourceVersion"].clone()
        }});
        if !self.labels.is_empty() {
            let labels: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, |v| json!(v))))
                .collect();
            patch["metadata"]["labels"] = Value::Object(labels);
        }
        if let Some(taints) = &self.taints {
            // An empty list is sent as null: the field goes away, as the API server stores it.
            patch["spec"] =
                json!({"taints": if taints.is_empty() { Value::Null } else { json!(taints) }});
        }
        patch
    }

    fn plan(self, cfg: &Config, name: &str, node: &Value) -> ComponentPlan {
        let mut plan = ComponentPlan {
            observed: observed(cfg, name, node),
            notes: self.notes,
            ..Default::default()
        };
        for (kind, n) in [("label", self.label_changes), ("taint", self.taint_changes)] {
            if n > 0 {
                plan.counts.insert(kind.into(), n);
            }
        }
        plan.changes = self.changes;
        let present = |o: &Value, k: &str| o[k].as_array().map_or(0, Vec::len) as f64;
        plan.metrics.insert(
            "managed_labels_present".into(),
            plan.observed["labels"].as_object().map_or(0, Map::len) as f64,
        );
        plan.metrics.insert(
            "managed_taints_present".into(),
            present(&plan.observed, "taints"),
        );
        plan
    }
}

/// What the fact shows: the managed labels and taints the Node carries, and how many other
/// taints it has.
fn observed(cfg: &Config, name: &str, node: &Value) -> Value {
    let empty = Map::new();
    let labels = node["metadata"]["labels"].as_object().unwrap_or(&empty);
    let managed_labels: Map<String, Value> = labels
        .iter()
        .filter(|(k, _)| cfg.kubernetes.labels.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut managed = Vec::new();
    let mut foreign = 0;
    for t in node["spec"]["taints"].as_array().into_iter().flatten() {
        let (k, v, e) = taint_of(t);
        if cfg
            .kubernetes
            .taints
            .iter()
            .any(|m| m.key == k && m.value == v && m.effect == e)
        {
            managed.push(taint_string(&k, &v, &e));
        } else {
            foreign += 1;
        }
    }
    json!({
        "name": name,
        "labels": managed_labels,
        "taints": managed,
        "foreign_taints": foreign,
    })
}

enum Patched {
    Done(Value),
    /// 409: the Node changed since it was read.
    Conflict(String),
}

fn get_node(kubectl: &Kubectl<'_>, node: &str) -> Result<Value> {
    let what = format!("reading Node {node}");
    let ran = kubectl.run(&what, &["get", "node", node, "-o", "json"])?;
    if !ran.ok {
        return Err(failure(kubectl, node, &what, &ran));
    }
    parse_node(&what, &ran.stdout)
}

fn patch_node(kubectl: &Kubectl<'_>, node: &str, patch: &Value) -> Result<Patched> {
    let what = format!("patching Node {node}");
    let body = patch.to_string();
    log::debug!("{what}: {body}");
    let ran = kubectl.run(
        &what,
        &[
            "patch",
            "node",
            node,
            "--type=merge",
            "-p",
            &body,
            "-o",
            "json",
        ],
    )?;
    if !ran.ok {
        if ran.stderr.contains("(Conflict)") {
            return Ok(Patched::Conflict(kube::cause(&ran.stderr)));
        }
        return Err(failure(kubectl, node, &what, &ran));
    }
    parse_node(&what, &ran.stdout).map(Patched::Done)
}

/// kubectl's failure, with what to do about a missing Node, missing rights or a refused change.
fn failure(kubectl: &Kubectl<'_>, node: &str, what: &str, ran: &Ran) -> anyhow::Error {
    let not_found = format!(
        "no Node named {node} is registered: set node_name in the configuration if this host registers under another name"
    );
    kubectl.failure(
        what,
        ran,
        &Hints {
            not_found: &not_found,
            forbidden: "the kubeconfig's user may not do this: it needs get and patch on nodes (RBAC)",
            invalid: "the API server refused the change: check kubernetes.labels and kubernetes.taints in the configuration",
        },
    )
}

fn parse_node(what: &str, stdout: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(stdout)
        .with_context(|| format!("{what}: kubectl's output is not JSON"))?;
    if v["kind"] != "Node" {
        bail!("{what}: kubectl returned a {} instead of a Node", v["kind"]);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(enabled: bool) -> Config {
        Config {
            enabled,
            ..Config::default()
        }
    }

    fn node(labels: Value, taints: Value) -> Value {
        json!({"kind": "Node", "metadata": {"name": "n", "resourceVersion": "7", "labels": labels},
               "spec": {"taints": taints}})
    }

    #[test]
    fn on_keeps_foreign_taints_and_replaces_the_same_key_and_effect() {
        let n = node(
            json!({"a": "b"}),
            json!([{"key": "dedicated", "value": "other", "effect": "NoSchedule"},
                   {"key": "dedicated", "value": "other", "effect": "PreferNoSchedule"}]),
        );
        let d = Drift::compute(&cfg(true), &n);
        let p = d.patch(&n);
        assert_eq!(p["metadata"]["resourceVersion"], "7");
        assert_eq!(
            p["metadata"]["labels"],
            json!({"dedicated": "mw-experimental"})
        );
        assert_eq!(
            p["spec"]["taints"],
            json!([{"key": "dedicated", "value": "mw-experimental", "effect": "NoSchedule"},
                   {"key": "dedicated", "value": "other", "effect": "PreferNoSchedule"},
                   {"key": "dedicated", "value": "mw-experimental", "effect": "NoExecute"}])
        );
    }

    #[test]
    fn off_removes_only_exact_matches() {
        let n = node(
            json!({"dedicated": "mw-experimental"}),
            json!([{"key": "dedicated", "value": "mw-experimental", "effect": "NoExecute",
                    "timeAdded": "2026-01-01T00:00:00Z"},
                   {"key": "dedicated", "value": "other", "effect": "NoSchedule"}]),
        );
        let d = Drift::compute(&cfg(false), &n);
        let p = d.patch(&n);
        assert_eq!(p["metadata"]["labels"], json!({"dedicated": null}));
        assert_eq!(
            p["spec"]["taints"],
            json!([{"key": "dedicated", "value": "other", "effect": "NoSchedule"}])
        );
    }

    #[test]
    fn off_leaves_a_label_with_another_value() {
        let n = node(json!({"dedicated": "other"}), Value::Null);
        let d = Drift::compute(&cfg(false), &n);
        assert!(d.is_empty());
        assert_eq!(d.notes.len(), 1);
    }
}
