//! `render`: the Kubernetes workload and Service, and the X-Wikimedia-Debug routing entries,
//! derived from the same configuration that labels and taints the nodes.
//!
//! The pods must tolerate exactly the taints the node component puts on the nodes and select
//! exactly its labels; written by hand, the two drift apart. So they are generated from
//! `kubernetes.labels` and `kubernetes.taints`: one toleration per taint, one required node
//! affinity expression per label.
//!
//! The workload is a DaemonSet, not a Deployment: each pod serves its own node's
//! `/srv/mediawiki` through a `hostPath`, and the Service's `externalTrafficPolicy: Local` drops
//! NodePort traffic on a node without a local pod. So every mw-experimental node needs exactly
//! one pod, and nodes come and go with the switch. A DaemonSet restricted by the node affinity
//! gives exactly that, and follows the switch by itself; a Deployment would need its replica
//! count kept equal to the number of nodes plus pod anti-affinity, and could still leave a node
//! without its pod during a rollout.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// Object names and the `app` label.
pub const APP: &str = "mw-experimental";
/// The `servergroup` label: its own group, so nothing pages for it.
pub const SERVERGROUP: &str = "kube-mw-experimental";
/// The HTTP port of the web server container.
pub const HTTP_PORT: u16 = 8080;
/// The NodePort, fixed so that the X-Wikimedia-Debug routing entries can name it.
pub const NODE_PORT: u16 = 30880;
/// Where the php-fpm settings are mounted; `PHP_INI_SCAN_DIR` adds it to PHP's own scan dir.
const PHP_INI_DIR: &str = "/etc/php-mw-experimental";
/// The image tag: the node already has the newest image (the sync timer reads the tree from
/// it), so `latest` with `IfNotPresent` runs what is there. Replace it to pin a version.
const TAG: &str = "latest";

/// The YAML documents for `nodes` (NAME or NAME=HOST; empty: this node).
pub fn render(cfg: &Config, nodes: &[String]) -> Result<String> {
    let k = &cfg.kubernetes;
    if k.labels.is_empty() {
        bail!("rendering the workload: kubernetes.labels is empty, so the DaemonSet would run on every node of the cluster; configure the labels the node component sets");
    }
    let routes = routes(cfg, nodes)?;
    let labels = json!({"app": APP, "servergroup": SERVERGROUP});
    let image = format!("{}:{TAG}", cfg.image.repository);
    let webserver = format!("{}:{TAG}", webserver_repository(&cfg.image.repository));
    let code_in_pod = cfg.image.path.display().to_string();

    let tolerations: Vec<Value> = k
        .taints
        .iter()
        .map(|t| json!({"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect}))
        .collect();
    let expressions: Vec<Value> = k
        .labels
        .iter()
        .map(|(key, v)| json!({"key": key, "operator": "In", "values": [v]}))
        .collect();
    let code_mount = json!({"name": "mediawiki-code", "mountPath": code_in_pod, "readOnly": true});

    let php_config = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": format!("{APP}-php"), "labels": labels},
        "data": {
            "zz-mw-experimental.ini": "; Engineers edit /srv/mediawiki on the node and see the change at once.\nopcache.validate_timestamps=1\nopcache.revalidate_freq=0\n"
        }
    });

    let daemonset = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": APP, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": APP}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": expressions}]
                    }}},
                    "tolerations": tolerations,
                    "containers": [
                        {
                            "name": "mediawiki-main-app",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "env": [{"name": "PHP_INI_SCAN_DIR", "value": format!(":{PHP_INI_DIR}")}],
                            "volumeMounts": [
                                code_mount,
                                {"name": "php-config", "mountPath": PHP_INI_DIR, "readOnly": true}
                            ]
                        },
                        {
                            "name": "mediawiki-main-httpd",
                            "image": webserver,
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
                            "readinessProbe": {"tcpSocket": {"port": "http"}},
                            "volumeMounts": [code_mount]
                        }
                    ],
                    "volumes": [
                        {"name": "mediawiki-code",
                         "hostPath": {"path": cfg.code.path.display().to_string(), "type": "Directory"}},
                        {"name": "php-config", "configMap": {"name": format!("{APP}-php")}}
                    ]
                }
            }
        }
    });

    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP, "labels": labels},
        "spec": {
            "type": "NodePort",
            "externalTrafficPolicy": "Local",
            "selector": {"app": APP},
            "ports": [{"name": "http", "protocol": "TCP", "port": HTTP_PORT,
                       "targetPort": "http", "nodePort": NODE_PORT}]
        }
    });

    let routing: Map<String, Value> = routes
        .iter()
        .map(|(backend, host)| (backend.clone(), json!(format!("{host}:{NODE_PORT}"))))
        .collect();
    let routing = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": format!("{APP}-xwd-routing"), "labels": labels},
        "data": routing
    });

    let mut out = String::new();
    out.push_str(
        "# mw-experimental: the Kubernetes side, generated by `mw-experimental render` from the same\n\
         # configuration that labels and taints the nodes. Apply with `kubectl apply -f -`.\n",
    );
    let docs: [(&str, &Value); 4] = [
        (
            "# php-fpm: revalidate every file on every request, so edits show at once.\n",
            &php_config,
        ),
        (
            "# One pod per node that carries every managed label (a DaemonSet with required node\n\
             # affinity), tolerating every managed taint, serving that node's own code tree\n\
             # read-only through a hostPath.\n",
            &daemonset,
        ),
        (
            "# NodePort with externalTrafficPolicy: Local: traffic that reaches a node's NodePort is\n\
             # served by the pod on that node, so X-Wikimedia-Debug picks the node's own tree.\n\
             # (internalTrafficPolicy governs only ClusterIP traffic: on its own it does not pin\n\
             # NodePort traffic to the local pod.)\n",
            &service,
        ),
        (
            "# X-Wikimedia-Debug routing entries: backend name -> host:port (the NodePort).\n",
            &routing,
        ),
    ];
    for (comment, doc) in docs {
        out.push_str("---\n");
        out.push_str(comment);
        out.push_str(
            &serde_saphyr::to_string(doc).context("writing the Kubernetes objects as YAML")?,
        );
    }
    Ok(out)
}

/// The web server image, next to the code image: `.../mediawiki-multiversion` ->
/// `.../mediawiki-webserver`.
fn webserver_repository(repository: &str) -> String {
    match repository.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/mediawiki-webserver"),
        None => "mediawiki-webserver".into(),
    }
}

/// `(backend name, host)` for each `NAME[=HOST]`; none given: this node, by its name.
fn routes(cfg: &Config, nodes: &[String]) -> Result<Vec<(String, String)>> {
    if nodes.is_empty() {
        let name = cfg.node_name()?;
        return Ok(vec![(name.clone(), name)]);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for spec in nodes {
        let (name, host) = spec.split_once('=').unwrap_or((spec, spec));
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && !s.starts_with(['-', '.'])
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if !valid(name) || !valid(host) {
            bail!("rendering the routing entries: --node {spec:?} is not NAME or NAME=HOST (a node name, and a host name or IPv4 address)");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("rendering the routing entries: node {name:?} is given twice");
        }
        out.push((name.to_string(), host.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_name_and_host() {
        let cfg = Config::default();
        let r = routes(&cfg, &["a.example".into(), "b=10.0.0.2".into()]).unwrap();
        assert_eq!(
            r,
            vec![
                ("a.example".to_string(), "a.example".to_string()),
                ("b".to_string(), "10.0.0.2".to_string())
            ]
        );
        assert!(routes(&cfg, &["--x".into()]).is_err());
        assert!(routes(&cfg, &["a=b c".into()]).is_err());
    }

    #[test]
    fn no_labels_is_refused() {
        let mut cfg = Config::default();
        cfg.kubernetes.labels.clear();
        assert!(render(&cfg, &["a".into()]).is_err());
    }
}
