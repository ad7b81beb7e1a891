//! `render`: the Kubernetes side of the switch, derived from the same configuration that labels
//! and taints the nodes, shaped like WMF's `mediawiki` chart where it applies.
//!
//! The pods must tolerate exactly the taints the node component puts on the nodes and select
//! exactly its labels; written by hand, the two drift apart. So they are generated from
//! `kubernetes.labels` and `kubernetes.taints`: one toleration per taint, one required node
//! affinity expression per label. Like the chart: a namespace, the php-fpm and web server
//! containers as www-data (uid/gid 33, never root, no privilege escalation, no capabilities),
//! resources from WMF's mw-experimental values, probes on every serving container, the
//! `servergroup: kube-mw-experimental` label on everything (its own metrics and logs, nothing
//! pages), the node's tree mounted read-only through a hostPath, and php's opcache revalidating
//! on every request (the chart's `php.devel_mode`). The pods run the exact image the node's code
//! follows; this module refuses an untagged or `latest` image. It only builds text: it must never
//! read the state, a release file or the cluster (the command resolves the images).
//!
//! The workload is a DaemonSet, not WMF's one-replica Deployment: each pod serves its own node's
//! `/srv/mediawiki`, and the Service's `externalTrafficPolicy: Local` drops NodePort traffic on a
//! node without a local pod. So every mw-experimental node needs exactly one pod, and nodes come
//! and go with the switch; a DaemonSet restricted by the node affinity gives exactly that.

use crate::config::{check_image_reference, Config, Resources};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Object names and the `app` label.
pub const APP: &str = "mw-experimental";
/// The `servergroup` label: its own group, so nothing pages for it.
pub const SERVERGROUP: &str = "kube-mw-experimental";
/// The HTTP port of the web server container (the chart's `php.httpd.port`).
pub const HTTP_PORT: u16 = 8080;
/// php-fpm's FastCGI port in the pod (the chart's `FCGI_TCP` mode).
pub const FCGI_PORT: u16 = 9000;
/// www-data on Debian and in WMF's images.
pub const WWW_DATA: u32 = 33;
/// Where the php settings are mounted; `PHP_INI_SCAN_DIR` adds it after PHP's own scan dir.
pub const PHP_INI_DIR: &str = "/etc/php-mw-experimental";
/// The php settings file in that directory.
pub const PHP_INI_FILE: &str = "zz-mw-experimental.ini";

/// The images the pods run (registry/name:tag each).
pub struct Images {
    pub app: String,
    pub webserver: String,
}

/// The php settings: opcache on, and revalidating every file on every request, so that an
/// engineer's edit is served by the next request (the chart sets the same through
/// `PHP__opcache__*` variables when `php.devel_mode` is true).
pub const PHP_INI: &str =
    "; mw-experimental: engineers edit the node's /srv/mediawiki and see the change at once.\n\
opcache.enable=1\n\
opcache.validate_timestamps=1\n\
opcache.revalidate_freq=0\n";

/// The YAML documents: Namespace, php settings, DaemonSet, Service.
pub fn render(cfg: &Config, images: &Images) -> Result<String> {
    let k = &cfg.kubernetes;
    let s = &cfg.service;
    check_labels(cfg)?;
    for (what, img) in [
        ("the MediaWiki image", &images.app),
        ("the web server image", &images.webserver),
    ] {
        if let Err(why) = check_image_reference(img) {
            bail!("rendering the workload: {what} {img:?} {why}");
        }
    }
    let labels = json!({"app": APP, "servergroup": SERVERGROUP});
    let meta = |name: &str| json!({"name": name, "namespace": s.namespace, "labels": labels});
    let code_in_pod = cfg.image.path.display().to_string();
    let code_mount = json!({"name": "mediawiki-code", "mountPath": code_in_pod, "readOnly": true});
    let security = json!({
        "runAsUser": WWW_DATA, "runAsGroup": WWW_DATA, "runAsNonRoot": true,
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}
    });
    let php_env = [
        ("SERVERGROUP", SERVERGROUP.to_string()),
        ("FCGI_MODE", "FCGI_TCP".into()),
        ("FCGI_URL", format!("0.0.0.0:{FCGI_PORT}")),
        ("PHP_INI_SCAN_DIR", format!(":{PHP_INI_DIR}")),
        // What the chart's php.devel_mode sets, for WMF's php-fpm image.
        ("PHP__opcache__validate_timestamps", "1".into()),
        ("PHP__opcache__revalidate_freq", "0".into()),
        ("FPM__catch_workers_output", "1".into()),
    ];
    let env: Vec<Value> = php_env
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();

    let namespace = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": s.namespace, "labels": labels}
    });
    let php_config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": meta(&format!("{APP}-php")),
        "data": {PHP_INI_FILE: PHP_INI}
    });
    let tolerations: Vec<Value> = k
        .taints
        .iter()
        .map(|t| {
            if t.value.is_empty() {
                json!({"key": t.key, "operator": "Exists", "effect": t.effect})
            } else {
                json!({"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect})
            }
        })
        .collect();
    let expressions: Vec<Value> = k
        .labels
        .iter()
        .map(|(key, v)| json!({"key": key, "operator": "In", "values": [v]}))
        .collect();
    let daemonset = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": meta(APP),
        "spec": {
            "selector": {"matchLabels": {"app": APP}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsUser": WWW_DATA, "runAsGroup": WWW_DATA,
                                        "runAsNonRoot": true,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 10,
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": expressions}]
                    }}},
                    "tolerations": tolerations,
                    "containers": [
                        {
                            "name": format!("{APP}-app"),
                            "image": images.app,
                            "imagePullPolicy": "IfNotPresent",
                            "env": env,
                            "ports": [{"name": "fcgi", "containerPort": FCGI_PORT, "protocol": "TCP"}],
                            "livenessProbe": {"tcpSocket": {"port": "fcgi"},
                                              "initialDelaySeconds": 1, "periodSeconds": 5},
                            "readinessProbe": {"tcpSocket": {"port": "fcgi"}, "periodSeconds": 5},
                            "resources": resources(&s.resources),
                            "securityContext": security,
                            "volumeMounts": [
                                code_mount,
                                {"name": "php-config", "mountPath": PHP_INI_DIR, "readOnly": true}
                            ]
                        },
                        {
                            "name": format!("{APP}-httpd"),
                            "image": images.webserver,
                            "imagePullPolicy": "IfNotPresent",
                            "env": [
                                {"name": "SERVERGROUP", "value": SERVERGROUP},
                                {"name": "FCGI_MODE", "value": "FCGI_TCP"},
                                {"name": "APACHE_RUN_PORT", "value": HTTP_PORT.to_string()}
                            ],
                            "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
                            "livenessProbe": {"tcpSocket": {"port": "http"}},
                            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
                            "resources": resources(&s.webserver_resources),
                            "securityContext": security,
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
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(APP),
        "spec": {
            "type": "NodePort",
            "externalTrafficPolicy": "Local",
            "selector": {"app": APP},
            "ports": [{"name": "http", "protocol": "TCP", "port": s.node_port,
                       "targetPort": "http", "nodePort": s.node_port}]
        }
    });

    let mut out = String::new();
    out.push_str(&format!(
        "# mw-experimental: the Kubernetes side, generated by `mw-experimental render` from the same\n\
         # configuration that labels and taints the nodes. Images: {} and {}.\n\
         # Apply with `kubectl apply -f -`.\n",
        images.app, images.webserver
    ));
    let docs: [(&str, &Value); 4] = [
        ("# The namespace (WMF: mw-experimental).\n", &namespace),
        (
            "# php: opcache on, revalidating every file on every request, so edits show at once.\n",
            &php_config,
        ),
        (
            "# One pod per node that carries every managed label (a DaemonSet with required node\n\
             # affinity), tolerating every managed taint, serving that node's own code tree\n\
             # read-only through a hostPath, as www-data.\n",
            &daemonset,
        ),
        (
            "# NodePort with externalTrafficPolicy: Local: traffic that reaches a node's NodePort is\n\
             # served by the pod on that node, so X-Wikimedia-Debug picks the node's own tree.\n\
             # (internalTrafficPolicy governs only ClusterIP traffic.) `mw-experimental routing`\n\
             # prints the X-Wikimedia-Debug entries for these nodes.\n",
            &service,
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

/// The DaemonSet must be confined to the managed labels.
pub fn check_labels(cfg: &Config) -> Result<()> {
    if cfg.kubernetes.labels.is_empty() {
        bail!("rendering the workload: kubernetes.labels is empty, so the DaemonSet would run on every node of the cluster; configure the labels the node component sets");
    }
    Ok(())
}

fn resources(r: &Resources) -> Value {
    json!({
        "requests": {"cpu": r.requests.cpu, "memory": r.requests.memory},
        "limits": {"cpu": r.limits.cpu, "memory": r.limits.memory}
    })
}

/// The values overlay for WMF's `mediawiki` chart release of mw-experimental (helmfile.d/
/// services/mw-experimental): the same switch expressed in the chart's own keys, from the same
/// labels, taints and resources.
pub fn helmfile_values(cfg: &Config) -> Result<String> {
    let k = &cfg.kubernetes;
    let s = &cfg.service;
    if k.labels.is_empty() {
        bail!("rendering the values: kubernetes.labels is empty, so the release would run on any node; configure the labels the node component sets");
    }
    let tolerations: Vec<Value> = k
        .taints
        .iter()
        .map(|t| {
            if t.value.is_empty() {
                json!({"key": t.key, "operator": "Exists", "effect": t.effect})
            } else {
                json!({"key": t.key, "value": t.value, "effect": t.effect})
            }
        })
        .collect();
    let values = json!({
        "mw": {"experimental": {"enabled": true}},
        "php": {"devel_mode": true},
        "affinity": {"nodeSelector": k.labels},
        "tolerations": tolerations,
        "main_app": {
            "requests": {"auto_compute": false, "cpu": s.resources.requests.cpu,
                         "memory": s.resources.requests.memory},
            "limits": {"enforce": true, "auto_compute": false, "cpu": s.resources.limits.cpu,
                       "memory": s.resources.limits.memory}
        },
        "mesh": {"public_port": s.node_port}
    });
    Ok(format!(
        "# Values overlay for WMF's mediawiki chart release of mw-experimental\n\
         # (operations-deployment-charts helmfile.d/services/mw-experimental), generated by\n\
         # `mw-experimental render --helmfile-values` from the node's configuration.\n\
         # mw.experimental.enabled mounts /srv/mediawiki from the node (hostPath, read-only);\n\
         # php.devel_mode turns on opcache revalidation; the image comes from scap's release\n\
         # file, and php.servergroup from helmfile's setTemplate (kube-mw-experimental).\n{}",
        serde_saphyr::to_string(&values).context("writing the values as YAML")?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> Images {
        Images {
            app: "r.example/restricted/mediawiki-multiversion:2024-08-08-135932-publish".into(),
            webserver: "r.example/restricted/mediawiki-webserver:2024-08-08-135932-webserver"
                .into(),
        }
    }

    #[test]
    fn no_labels_is_refused() {
        let mut cfg = Config::default();
        cfg.kubernetes.labels.clear();
        assert!(render(&cfg, &images()).is_err());
        assert!(helmfile_values(&cfg).is_err());
    }

    #[test]
    fn latest_or_untagged_images_are_refused() {
        let cfg = Config::default();
        for bad in ["r.example/mw:latest", "r.example/mw", "r.example:5000/mw"] {
            let e = render(
                &cfg,
                &Images {
                    app: bad.into(),
                    webserver: images().webserver,
                },
            )
            .unwrap_err();
            assert!(format!("{e}").contains("MediaWiki image"), "{bad}: {e}");
        }
    }
}
