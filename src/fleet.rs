//! The fleet: every node's `mw_experimental` fact as PuppetDB holds it, one row per node, for
//! SREs who want to see which nodes are on, converged, at which image, with how many edits and
//! holds, without ssh to each; and which nodes can take X-Wikimedia-Debug traffic (the entries
//! themselves are [`crate::routing`]'s).
//!
//! It reads what [`crate::puppetdb`] returns and never anything else: no node is contacted, and a
//! node whose facts are old is marked stale, never dropped (an old fact is still the last word we
//! have). Routing lists only nodes that are on, converged and not stale.

use crate::puppetdb::Client;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// One node, as its fact says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Node {
    pub certname: String,
    /// The Kubernetes node name the fact reports (the routing backend); the certname if none.
    pub node_name: String,
    /// The switch; `None` when the fact could not read the configuration.
    pub enabled: Option<bool>,
    pub converged: bool,
    /// The tag of the image last synced (the reference's part after the last `:`).
    pub image: Option<String>,
    pub last_sync: Option<String>,
    pub edits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds: Option<u64>,
    /// The first error the fact reports (a component's, the last apply's or sync's, or why its
    /// state is unknown).
    pub error: Option<String>,
    /// When the node produced these facts (RFC 3339), and how old they are.
    pub facts_at: Option<String>,
    pub age_seconds: Option<u64>,
    pub stale: bool,
}

/// Every node with an `mw_experimental` fact, by certname, with its facts' producer timestamp.
pub fn read(client: &Client, now: SystemTime, stale_after: Duration) -> Result<Vec<Node>> {
    let facts = client.query(r#"facts[certname, value] { name = "mw_experimental" }"#)?;
    let sets = client.query(
        r#"factsets[certname, producer_timestamp] { certname in facts[certname] { name = "mw_experimental" } }"#,
    )?;
    let times: BTreeMap<String, String> = sets
        .iter()
        .filter_map(|r| {
            Some((
                r.get("certname")?.as_str()?.to_string(),
                r.get("producer_timestamp")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let mut nodes: Vec<Node> = facts
        .iter()
        .filter_map(|r| {
            let certname = r.get("certname")?.as_str()?;
            Some(node(
                certname,
                r.get("value").unwrap_or(&Value::Null),
                times.get(certname).map(String::as_str),
                now,
                stale_after,
            ))
        })
        .collect();
    nodes.sort_by(|a, b| a.certname.cmp(&b.certname));
    Ok(nodes)
}

/// One row from a node's fact value (the object under `mw_experimental`).
pub fn node(
    certname: &str,
    fact: &Value,
    facts_at: Option<&str>,
    now: SystemTime,
    stale_after: Duration,
) -> Node {
    let str_at = |path: &[&str]| -> Option<String> {
        let mut v = fact;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str().map(String::from)
    };
    let count = |v: Option<&Value>| -> Option<u64> {
        match v? {
            Value::Number(n) => n.as_u64(),
            Value::Array(a) => Some(a.len() as u64),
            Value::Object(o) => Some(o.len() as u64),
            _ => None,
        }
    };
    let code = fact.get("code");
    let image = str_at(&["code", "image"]).map(|r| tag(&r));
    let last_sync = str_at(&["last_sync", "at"]).or_else(|| str_at(&["code", "synced_at"]));
    let edits = count(code.and_then(|c| c.get("local_edits")));
    let holds = count(
        fact.get("holds")
            .or_else(|| code.and_then(|c| c.get("holds"))),
    );
    let error = ["group", "permissions", "node", "code"]
        .iter()
        .find_map(|c| str_at(&[c, "error"]).map(|e| format!("{c}: {e}")))
        .or_else(|| str_at(&["last_apply", "error"]).map(|e| format!("apply: {e}")))
        .or_else(|| str_at(&["last_sync", "error"]).map(|e| format!("sync: {e}")))
        .or_else(|| {
            (str_at(&["state"]).as_deref() == Some("unknown"))
                .then(|| str_at(&["reason"]).unwrap_or_else(|| "state unknown".into()))
        });
    let age = facts_at
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        .map(|t| now.duration_since(t).unwrap_or_default().as_secs());
    Node {
        certname: certname.to_string(),
        node_name: str_at(&["node", "name"]).unwrap_or_else(|| certname.to_string()),
        enabled: fact.get("enabled").and_then(Value::as_bool),
        converged: fact.get("converged").and_then(Value::as_bool) == Some(true),
        image,
        last_sync,
        edits,
        holds,
        error,
        facts_at: facts_at.map(String::from),
        age_seconds: age,
        // No timestamp at all: we cannot say it is fresh.
        stale: age.is_none_or(|a| a > stale_after.as_secs()),
    }
}

/// `repo/name:tag` -> `tag`; `repo/name@sha256:...` -> the digest; anything else as it is.
fn tag(reference: &str) -> String {
    if let Some((_, digest)) = reference.split_once('@') {
        return digest.to_string();
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.rsplit_once(':') {
        Some((_, t)) => t.to_string(),
        None => reference.to_string(),
    }
}

/// Whether X-Wikimedia-Debug may route to it: on, converged, and its facts are fresh.
pub fn routable(n: &Node) -> bool {
    n.enabled == Some(true) && n.converged && !n.stale
}

/// The summary line, then one line per node.
pub fn text(nodes: &[Node], stale_after: Duration) -> String {
    let on = nodes.iter().filter(|n| n.enabled == Some(true)).count();
    let converged = nodes.iter().filter(|n| routable(n)).count();
    let stale = nodes.iter().filter(|n| n.stale).count();
    let mut out = format!(
        "{} nodes with the mw_experimental fact: {on} on, {converged} on and converged with fresh facts, {stale} stale (facts older than {})\n",
        nodes.len(),
        humantime::format_duration(stale_after)
    );
    if nodes.is_empty() {
        return out;
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<[String; 8]> = nodes
        .iter()
        .map(|n| {
            [
                n.certname.clone(),
                match n.enabled {
                    Some(true) => "on".into(),
                    Some(false) => "off".into(),
                    None => "?".into(),
                },
                if n.converged { "yes" } else { "no" }.into(),
                opt(&n.image),
                opt(&n.last_sync),
                n.edits.map_or("-".into(), |e| e.to_string())
                    + &n.holds.map_or(String::new(), |h| format!(" ({h} held)")),
                if n.stale {
                    format!("STALE {}", age(n.age_seconds))
                } else {
                    age(n.age_seconds)
                },
                opt(&n.error),
            ]
        })
        .collect();
    let head = [
        "NODE",
        "SWITCH",
        "CONVERGED",
        "IMAGE",
        "LAST SYNC",
        "EDITS",
        "FACTS AGE",
        "LAST ERROR",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(head.iter().map(|s| s.to_string()).collect()));
    for r in rows {
        out.push_str(&line(r.to_vec()));
    }
    out
}

fn age(secs: Option<u64>) -> String {
    match secs {
        None => "unknown".into(),
        Some(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn a_node_row_from_its_fact() {
        let fact = json!({
            "enabled": true, "converged": true, "state": "known",
            "last_sync": {"at": "2026-11-26T03:00:00Z", "result": "ok"},
            "node": {"name": "wikikube-worker-exp1001", "converged": true},
            "code": {"image": "docker-registry.example:5000/restricted/mediawiki-multiversion:2026-11-20-101010-publish-1",
                     "local_edits": 3}
        });
        let n = node(
            "wikikube-worker-exp1001.eqiad.wmnet",
            &fact,
            Some("2026-11-26T04:00:00.000Z"),
            at("2026-11-26T04:30:00Z"),
            Duration::from_secs(3600),
        );
        assert_eq!(n.image.as_deref(), Some("2026-11-20-101010-publish-1"));
        assert_eq!(n.edits, Some(3));
        assert_eq!(n.holds, None);
        assert_eq!(n.age_seconds, Some(1800));
        assert!(!n.stale);
        assert!(routable(&n));
    }

    #[test]
    fn old_or_undated_facts_are_stale_and_never_routed() {
        let fact = json!({"enabled": true, "converged": true});
        let now = at("2026-11-26T04:30:00Z");
        let old = node(
            "a",
            &fact,
            Some("2026-11-26T01:00:00Z"),
            now,
            Duration::from_secs(3600),
        );
        assert!(old.stale && !routable(&old));
        let undated = node("b", &fact, None, now, Duration::from_secs(3600));
        assert!(undated.stale);
        let t = text(&[old], Duration::from_secs(3600));
        assert!(
            t.starts_with("1 nodes with the mw_experimental fact: 1 on, 0 on and converged"),
            "{t}"
        );
        assert!(t.contains("STALE 3h 30m"), "{t}");
    }

    #[test]
    fn the_first_error_is_named_with_its_component() {
        let fact = json!({"enabled": true, "converged": false,
            "node": {"converged": false, "error": "reading Node n: 500"},
            "last_apply": {"result": "error", "error": "node failed"}});
        let n = node("a", &fact, None, SystemTime::now(), Duration::from_secs(60));
        assert_eq!(n.error.as_deref(), Some("node: reading Node n: 500"));
        let unknown = json!({"enabled": null, "converged": false, "state": "unknown", "reason": "no state file"});
        let n = node(
            "b",
            &unknown,
            None,
            SystemTime::now(),
            Duration::from_secs(60),
        );
        assert_eq!(
            (n.enabled, n.error.as_deref()),
            (None, Some("no state file"))
        );
    }

    #[test]
    fn tags_and_digests() {
        assert_eq!(tag("reg:5000/a/b:t1"), "t1");
        assert_eq!(tag("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(tag("a/b@sha256:abc"), "sha256:abc");
    }
}
