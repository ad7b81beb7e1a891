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

/// The images the pods run (registry/name:tag each), with the digest of what each tag pointed
/// at when the node got it (`sha256:...`), where the node knows it.
pub struct Images {
    pub app: String,
    pub webserver: String,
    pub app_digest: Option<String>,
    pub webserver_digest: Option<String>,
}

/// Where each container may write, while its root file system is read-only: an `emptyDir` of
/// its own at `/tmp` (uploads, sessions, php's and Apache's temporary files) and `/run` (pid and
/// lock files, Apache's `/run/apache2` and `/run/lock`).
const SCRATCH: [(&str, &str, &str); 2] = [("tmp", "/tmp", "256Mi"), ("run", "/run", "16Mi")];

/// What checkov (`--framework kubernetes`) reports that is right as it is, waived on the object
/// with its skip annotation and a one-line reason.
const WAIVERS: [(&str, &str); 2] = [
    (
        "CKV_K8S_40",
        "uid 33 (www-data) is what WMF's php-fpm and web server images run as, and what reads the tree",
    ),
    (
        "CKV_K8S_15",
        "IfNotPresent: the pods run the image the node already holds, by tag and digest; Always would make every start depend on the registry",
    ),
];

/// `registry/name:tag@sha256:...` when the digest is a registry's (a directory source's is
/// not), else the tag alone.
pub fn pinned(reference: &str, digest: Option<&str>) -> String {
    match digest {
        Some(d)
            if d.len() == 71
                && d.starts_with("sha256:")
                && d[7..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            format!("{reference}@{d}")
        }
        _ => reference.to_string(),
    }
}

/// The php settings: opcache on, and revalidating every file on every request, so that an
/// engineer's edit is served by the next request (the chart sets the same through
/// `PHP__opcache__*` variables when `php.devel_mode` is true).
pub const PHP_INI: &str =
    "; mw-experimental: engineers edit the node's /srv/mediawiki and see the change at once.\n\
opcache.enable=1\n\
opcache.validate_timestamps=1\n\
opcache.revalidate_freq=0\n";

/// The YAML documents: Namespace, php settings, DaemonSet, Service, NetworkPolicy.
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
    let app_image = pinned(&images.app, images.app_digest.as_deref());
    let webserver_image = pinned(&images.webserver, images.webserver_digest.as_deref());
    let labels = json!({"app": APP, "servergroup": SERVERGROUP});
    let meta = |name: &str| json!({"name": name, "namespace": s.namespace, "labels": labels});
    let code_in_pod = cfg.image.path.display().to_string();
    let code_mount = json!({"name": "mediawiki-code", "mountPath": code_in_pod, "readOnly": true});
    let security = json!({
        "runAsUser": WWW_DATA, "runAsGroup": WWW_DATA, "runAsNonRoot": true,
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": true,
        "seccompProfile": {"type": "RuntimeDefault"}
    });
    // Each container's own scratch volumes: "<container>-tmp", "<container>-run".
    let scratch_mounts = |c: &str| -> Vec<Value> {
        SCRATCH
            .iter()
            .map(|(n, path, _)| json!({"name": format!("{c}-{n}"), "mountPath": path}))
            .collect()
    };
    let mut volumes = vec![
        json!({"name": "mediawiki-code",
               "hostPath": {"path": cfg.code.path.display().to_string(), "type": "Directory"}}),
        json!({"name": "php-config", "configMap": {"name": format!("{APP}-php")}}),
    ];
    for c in ["app", "httpd"] {
        for (n, _, size) in SCRATCH {
            let medium = if n == "run" { "Memory" } else { "" };
            volumes.push(json!({"name": format!("{c}-{n}"),
                                "emptyDir": {"medium": medium, "sizeLimit": size}}));
        }
    }
    let mut app_mounts = vec![
        code_mount.clone(),
        json!({"name": "php-config", "mountPath": PHP_INI_DIR, "readOnly": true}),
    ];
    app_mounts.extend(scratch_mounts("app"));
    let mut httpd_mounts = vec![code_mount];
    httpd_mounts.extend(scratch_mounts("httpd"));
    // checkov's waivers: the fixed ones, and the digest pin where the node does not know a digest.
    let mut waivers: Vec<(String, String)> = WAIVERS
        .iter()
        .map(|(id, why)| (id.to_string(), why.to_string()))
        .collect();
    let unpinned: Vec<&str> = [(&app_image, "MediaWiki"), (&webserver_image, "web server")]
        .iter()
        .filter(|(i, _)| !i.contains('@'))
        .map(|(_, what)| *what)
        .collect();
    if !unpinned.is_empty() {
        waivers.push((
            "CKV_K8S_43".into(),
            if unpinned.len() == 1 {
                format!(
                    "the node knows no registry digest of the {} image, which runs by its exact tag",
                    unpinned[0]
                )
            } else {
                "the node knows no registry digest of the MediaWiki and web server images, which run by their exact tags".to_string()
            },
        ));
    }
    let annotations: serde_json::Map<String, Value> = waivers
        .iter()
        .enumerate()
        .map(|(i, (id, why))| {
            (
                format!("checkov.io/skip{}", i + 1),
                json!(format!("{id}={why}")),
            )
        })
        .collect();
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
    let mut ds_meta = meta(APP);
    ds_meta["annotations"] = Value::Object(annotations);
    let daemonset = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": ds_meta,
        "spec": {
            "selector": {"matchLabels": {"app": APP}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    // MediaWiki never calls the Kubernetes API.
                    "automountServiceAccountToken": false,
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
                            "image": app_image,
                            "imagePullPolicy": "IfNotPresent",
                            "env": env,
                            "ports": [{"name": "fcgi", "containerPort": FCGI_PORT, "protocol": "TCP"}],
                            "livenessProbe": {"tcpSocket": {"port": "fcgi"},
                                              "initialDelaySeconds": 1, "periodSeconds": 5},
                            "readinessProbe": {"tcpSocket": {"port": "fcgi"}, "periodSeconds": 5},
                            "resources": resources(&s.resources),
                            "securityContext": security,
                            "volumeMounts": app_mounts
                        },
                        {
                            "name": format!("{APP}-httpd"),
                            "image": webserver_image,
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
                            "volumeMounts": httpd_mounts
                        }
                    ],
                    "volumes": volumes
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
    // Ingress: the NodePort's traffic, which reaches the pod on the web server's port with the
    // client's own address (externalTrafficPolicy: Local), from anywhere. php-fpm's port is only
    // for the web server in the same pod, and the kubelet's probes come from the node itself,
    // which network policies do not filter. Egress: MediaWiki reaches what production's pods
    // reach (databases, caches, the service mesh, DNS, logging), which WMF's cluster-wide
    // policies govern; listed here it would drift, so every egress is admitted explicitly.
    let network_policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": meta(APP),
        "spec": {
            "podSelector": {"matchLabels": {"app": APP}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": HTTP_PORT}]}],
            "egress": [{}]
        }
    });

    let mut out = String::new();
    out.push_str(&format!(
        "# mw-experimental: the Kubernetes side, generated by `mw-experimental render` from the same\n\
         # configuration that labels and taints the nodes. Images: {} and {}.\n\
         # Apply with `kubectl apply -f -`.\n",
        app_image, webserver_image
    ));
    let docs: [(&str, &Value); 5] = [
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
        (
            "# Who may reach the pods: the NodePort traffic on the web server's port; MediaWiki may\n\
             # reach what production's pods reach.\n",
            &network_policy,
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
            app_digest: None,
            webserver_digest: None,
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
                    ..images()
                },
            )
            .unwrap_err();
            assert!(format!("{e}").contains("MediaWiki image"), "{bad}: {e}");
        }
    }

    #[test]
    fn images_are_pinned_only_to_a_registry_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            pinned("r.example/mw:t1", Some(&d)),
            format!("r.example/mw:t1@{d}")
        );
        for not_a_registry_digest in [
            None,
            Some(format!("blake3:{}", "ab".repeat(32))),
            Some("sha256:abc".to_string()),
            Some(format!("sha256:{}", "AB".repeat(32))),
        ] {
            assert_eq!(
                pinned("r.example/mw:t1", not_a_registry_digest.as_deref()),
                "r.example/mw:t1"
            );
        }
    }
}
