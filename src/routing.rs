//! The X-Wikimedia-Debug routing entries for the mw-experimental nodes, in the form of WMF's
//! ATS Lua table (operations-puppet `modules/profile/files/trafficserver/
//! x-wikimedia-debug-routing.lua`): `["BACKEND"] = { host = "HOST", port = PORT },`.
//!
//! The list comes from the cluster: the Nodes that carry every managed label, in one
//! `kubectl get nodes -l ... -o json` under the same time limit as the node component, so a node
//! switched off (or one that lost a label) drops out by itself; or from a hand-made list. Each
//! node gets one backend, `<service.routing_prefix>-<data centre>-<node>`, pointing at the
//! node's NodePort (`service.node_port`), where `externalTrafficPolicy: Local` has that node's
//! own pod answer. It only reads: it must never change a Node, and never put a character into
//! the Lua text that the X-Wikimedia-Debug `backend=` pattern or a Lua string would not take.

use crate::config::Config;
use crate::kube::{Hints, Kubectl};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// The label that names a Node's data centre (`region` in Kubernetes' topology labels).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// One routing entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// What `X-Wikimedia-Debug: backend=...` names.
    pub backend: String,
    pub host: String,
    pub port: u16,
    /// The Node it routes to.
    pub node: String,
    pub datacenter: Option<String>,
}

/// The label selector for the managed labels (`k=v,k2=v2`).
pub fn selector(cfg: &Config) -> String {
    cfg.kubernetes
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The Nodes carrying every managed label, as kubectl lists them (a `List` of Nodes).
pub fn labelled_nodes(cfg: &Config) -> Result<Value> {
    if cfg.kubernetes.labels.is_empty() {
        bail!("listing the mw-experimental Nodes: kubernetes.labels is empty, so every Node would be listed; configure the labels the node component sets");
    }
    let kubectl = Kubectl::new(cfg, "the routing command", 1);
    let what = "listing the Nodes that carry every managed label";
    let sel = selector(cfg);
    let ran = kubectl.run(what, &["get", "nodes", "-l", &sel, "-o", "json"])?;
    if !ran.ok {
        return Err(kubectl.failure(
            what,
            &ran,
            &Hints {
                not_found: "check that the kubeconfig points at the cluster",
                forbidden: "the kubeconfig's user needs to list nodes (get, list on nodes)",
                invalid: "check kubernetes.labels",
            },
        ));
    }
    serde_json::from_slice(&ran.stdout)
        .with_context(|| format!("{what}: kubectl's output is not JSON"))
}

/// The entries for the Nodes in `list`, sorted by backend; notes for Nodes left out.
pub fn from_nodes(cfg: &Config, list: &Value) -> (Vec<Entry>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for n in list["items"].as_array().into_iter().flatten() {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        // kubectl already selected them; check again, so that nothing else can slip in.
        let carries_all = cfg
            .kubernetes
            .labels
            .iter()
            .all(|(k, v)| n["metadata"]["labels"][k].as_str() == Some(v));
        if !carries_all {
            continue;
        }
        let addresses = n["status"]["addresses"].as_array();
        let address = |kind: &str| {
            addresses
                .into_iter()
                .flatten()
                .filter(|a| a["type"] == kind)
                .filter_map(|a| a["address"].as_str())
                .next()
                .map(str::to_string)
        };
        let host = if name.contains('.') {
            Some(name.to_string())
        } else {
            address("InternalDNS")
                .filter(|h| h.contains('.'))
                .or_else(|| address("InternalIP"))
                .or_else(|| address("Hostname"))
        };
        let Some(host) = host else {
            notes.push(format!(
                "Node {name:?} has no host name or InternalIP address to route to: left out"
            ));
            continue;
        };
        let dc = n["metadata"]["labels"][REGION_LABEL]
            .as_str()
            .map(str::to_string);
        match entry(cfg, name, &host, dc) {
            Ok(e) => out.push(e),
            Err(why) => notes.push(format!("Node {name:?}: {why}: left out")),
        }
    }
    out.sort_by(|a, b| a.backend.cmp(&b.backend));
    (out, notes)
}

/// The entries for a hand-made list of `NAME[=HOST]`.
pub fn from_list(cfg: &Config, specs: &[String]) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    for spec in specs {
        let (name, host) = spec.split_once('=').unwrap_or((spec, spec));
        let e = entry(cfg, name, host, None).map_err(|why| {
            anyhow::anyhow!("--node {spec:?} is not NAME or NAME=HOST (a node name, and a host name or IPv4 address): {why}")
        })?;
        if out.iter().any(|o| o.node == e.node) {
            bail!("--node: node {name:?} is given twice");
        }
        out.push(e);
    }
    out.sort_by(|a, b| a.backend.cmp(&b.backend));
    Ok(out)
}

fn entry(
    cfg: &Config,
    name: &str,
    host: &str,
    dc: Option<String>,
) -> std::result::Result<Entry, String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && !s.starts_with(['-', '.'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if !valid(name) {
        return Err(format!("{name:?} is not a node name"));
    }
    if !valid(host) {
        return Err(format!("{host:?} is not a host name or IPv4 address"));
    }
    let mut labels = name.split('.');
    let short = labels.next().unwrap_or(name);
    // wikikube-worker-exp1001.eqiad.wmnet: the data centre is the second label.
    let dc = dc.filter(|d| valid(d) && !d.contains('.')).or_else(|| {
        let second = labels.next()?;
        labels.next().map(|_| second.to_string())
    });
    let backend = match &dc {
        Some(dc) => format!("{}-{dc}-{short}", cfg.service.routing_prefix),
        None => format!("{}-{short}", cfg.service.routing_prefix),
    };
    Ok(Entry {
        backend,
        host: host.to_string(),
        port: cfg.service.node_port,
        node: name.to_string(),
        datacenter: dc,
    })
}

/// The entries as lines of the ATS Lua table, after a comment line that says what they are.
pub fn lua(entries: &[Entry], summary: &str) -> String {
    let mut out = format!("-- {summary}\n");
    for e in entries {
        out.push_str(&format!(
            "[\"{}\"] = {{ host = \"{}\", port = {} }},\n",
            e.backend, e.host, e.port
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wmf_node_names_give_data_centre_and_node() {
        let cfg = Config::default();
        let e = from_list(
            &cfg,
            &[
                "wikikube-worker-exp2001.codfw.wmnet".into(),
                "wikikube-worker-exp1001.eqiad.wmnet".into(),
                "exp3=10.0.0.3".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            lua(&e, "test"),
            "-- test\n\
             [\"k8s-mw-experimental-codfw-wikikube-worker-exp2001\"] = { host = \"wikikube-worker-exp2001.codfw.wmnet\", port = 4456 },\n\
             [\"k8s-mw-experimental-eqiad-wikikube-worker-exp1001\"] = { host = \"wikikube-worker-exp1001.eqiad.wmnet\", port = 4456 },\n\
             [\"k8s-mw-experimental-exp3\"] = { host = \"10.0.0.3\", port = 4456 },\n"
        );
        assert!(from_list(&cfg, &["a=b c".into()]).is_err());
        assert!(from_list(&cfg, &["a\"]=".into()]).is_err());
        assert!(from_list(&cfg, &["a".into(), "a=b".into()]).is_err());
    }

    #[test]
    fn cluster_nodes_need_every_label_and_an_address() {
        let cfg = Config::default();
        let list = json!({"items": [
            {"metadata": {"name": "exp1", "labels": {"dedicated": "mw-experimental", REGION_LABEL: "eqiad"}},
             "status": {"addresses": [{"type": "Hostname", "address": "exp1"},
                                      {"type": "InternalIP", "address": "10.64.0.1"}]}},
            {"metadata": {"name": "exp2", "labels": {"dedicated": "other"}},
             "status": {"addresses": [{"type": "InternalIP", "address": "10.64.0.2"}]}},
            {"metadata": {"name": "exp3", "labels": {"dedicated": "mw-experimental"}}},
        ]});
        let (e, notes) = from_nodes(&cfg, &list);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].backend, "k8s-mw-experimental-eqiad-exp1");
        assert_eq!(e[0].host, "10.64.0.1");
        assert_eq!(notes.len(), 1, "{notes:?}");
    }
}
