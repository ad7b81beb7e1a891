//! `render`: the manifests pass the real kubectl, and the pods they describe tolerate every
//! configured taint and select exactly the nodes that carry the configured labels (judged with
//! Kubernetes' own matching rules against the Node the `node` component labelled).

use crate::support::kube::{kube_world, node_name, run};
use crate::support::kube_api::{node, ApiServer};
use crate::support::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// Labels and taints beyond the defaults, so that a renderer that hard-codes
/// `dedicated=mw-experimental` fails.
const EXTRA: &str = "  labels: { dedicated: mw-experimental, example.org/pool: exp-debug }\n  taints:\n    - { key: dedicated, value: mw-experimental, effect: NoSchedule }\n    - { key: dedicated, value: mw-experimental, effect: NoExecute }\n    - { key: example.org/debug-only, value: \"yes\", effect: PreferNoSchedule }\n    - { key: example.org/no-value, effect: NoSchedule }\n";

/// `kubectl apply --dry-run=client --validate=false -f - ARGS` with `yaml` on stdin.
fn kubectl_apply_dry_run(api: &ApiServer, yaml: &str, args: &[&str]) -> Out {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .env(
            "KUBECACHEDIR",
            api.kubeconfig().parent().unwrap().join("kubectl-cache"),
        )
        .args(["apply", "--dry-run=client", "--validate=false", "-f", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    Out::of(child.wait_with_output().unwrap())
}

/// Kubernetes' `ToleratesTaint`.
fn tolerates(tol: &Value, taint: &Value) -> bool {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    if !s(tol, "effect").is_empty() && s(tol, "effect") != s(taint, "effect") {
        return false;
    }
    if !s(tol, "key").is_empty() && s(tol, "key") != s(taint, "key") {
        return false;
    }
    match s(tol, "operator").as_str() {
        "Exists" => true,
        "" | "Equal" => s(tol, "value") == s(taint, "value"),
        other => panic!("unknown toleration operator {other}"),
    }
}

/// Kubernetes' required node affinity: terms are ORed, expressions in a term ANDed.
fn affinity_selects(affinity: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
        .expect("required node affinity terms");
    terms.iter().any(|term| {
        term["matchExpressions"]
            .as_array()
            .expect("matchExpressions")
            .iter()
            .all(|e| {
                let have = labels[e["key"].as_str().unwrap()].as_str();
                let values: Vec<&str> = e["values"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e["operator"].as_str().unwrap() {
                    "In" => have.is_some_and(|h| values.contains(&h)),
                    "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    other => panic!("operator {other} not handled by this test"),
                }
            })
    })
}

fn item<'a>(list: &'a Value, kind: &str, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .expect("a List from kubectl")
        .iter()
        .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {list}"))
}

/// A release values file as scap writes it, in `dir`, and the config keys that follow it.
fn image_config(dir: &std::path::Path) -> String {
    let rel = dir.join("mw-experimental-pinkllama-eqiad.yaml");
    std::fs::write(
        &rel,
        format!("docker:\n  registry: docker-registry.discovery.wmnet\nmain_app:\n  image: restricted/mediawiki-multiversion:{TAG}\nmw:\n  httpd:\n    image_tag: restricted/mediawiki-webserver:2024-08-08-140102-webserver\n"),
    )
    .unwrap();
    format!("image:\n  release_file: {}\n", rel.display())
}

const TAG: &str = "2024-08-08-135932-publish";

/// What the issue asks of every rendered workload, as a reviewer would check it: no container
/// may run as root, every image names a tag that is not `latest`, every container has requests
/// and limits, every managed taint is tolerated. Returns what is wrong.
fn production_problems(list: &Value, taints: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    let mut workloads = 0;
    for obj in list["items"].as_array().unwrap() {
        let Some(pod) = obj["spec"]["template"]["spec"].as_object() else {
            continue;
        };
        workloads += 1;
        let pod = Value::Object(pod.clone());
        let pod_sc = &pod["securityContext"];
        for c in pod["containers"].as_array().unwrap() {
            let n = c["name"].as_str().unwrap_or("?");
            let sc = &c["securityContext"];
            let uid = sc["runAsUser"].as_i64().or(pod_sc["runAsUser"].as_i64());
            let non_root = sc["runAsNonRoot"]
                .as_bool()
                .or(pod_sc["runAsNonRoot"].as_bool());
            if uid.is_none_or(|u| u == 0) || non_root != Some(true) {
                p.push(format!("{n} may run as root"));
            }
            if sc["allowPrivilegeEscalation"] != json!(false) {
                p.push(format!("{n} may escalate privileges"));
            }
            let image = c["image"].as_str().unwrap_or("");
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|l| l.split_once(':'))
                .map(|(_, t)| t);
            if tag.is_none_or(|t| t.is_empty() || t == "latest") {
                p.push(format!("{n} runs {image:?}: untagged or latest"));
            }
            for k in ["requests", "limits"] {
                for r in ["cpu", "memory"] {
                    if c["resources"][k][r].as_str().is_none_or(str::is_empty) {
                        p.push(format!("{n} has no {k}.{r}"));
                    }
                }
            }
            if c["ports"].as_array().is_some_and(|a| !a.is_empty())
                && (c["readinessProbe"].is_null() || c["livenessProbe"].is_null())
            {
                p.push(format!("{n} serves without readiness and liveness probes"));
            }
        }
        let tolerations = pod["tolerations"].as_array().cloned().unwrap_or_default();
        for t in taints {
            if !tolerations.iter().any(|tol| tolerates(tol, t)) {
                p.push(format!("no toleration for {t}"));
            }
        }
    }
    if workloads == 0 {
        p.push("no workload".into());
    }
    p
}

#[test]
fn rendered_manifests_pass_kubectl_apply_dry_run_and_are_production_shaped() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[], &[])]);
    let images = tempfile::tempdir().unwrap();
    let w = kube_world(
        &api,
        &name,
        true,
        &format!("{EXTRA}{}", image_config(images.path())),
    );
    let (out, _) = run(&w, &api, &["render"]);
    out.code(0);
    let yaml = out.stdout;
    let applied = kubectl_apply_dry_run(&api, &yaml, &[]);
    applied.code(0);
    for obj in [
        "namespace/mw-experimental created (dry run)",
        "configmap/mw-experimental-php created (dry run)",
        "daemonset.apps/mw-experimental created (dry run)",
        "service/mw-experimental created (dry run)",
        "networkpolicy.networking.k8s.io/mw-experimental created (dry run)",
    ] {
        assert!(
            applied.stdout.contains(obj),
            "kubectl did not take {obj}:\n{}",
            applied.stdout
        );
    }
    // kubectl looked for the live objects (that is what apply does, also in a dry run).
    assert!(api
        .log()
        .iter()
        .any(|r| r.path == "/apis/apps/v1/namespaces/mw-experimental/daemonsets/mw-experimental"));
    assert!(
        api.log().iter().all(|r| r.method == "GET"),
        "a dry run wrote"
    );

    let list = kubectl_apply_dry_run(&api, &yaml, &["-o", "json"]).json();
    let taints: Vec<Value> = [
        ("dedicated", "mw-experimental", "NoSchedule"),
        ("dedicated", "mw-experimental", "NoExecute"),
        ("example.org/debug-only", "yes", "PreferNoSchedule"),
        ("example.org/no-value", "", "NoSchedule"),
    ]
    .iter()
    .map(|(k, v, e)| json!({"key": k, "value": v, "effect": e}))
    .collect();
    assert_eq!(production_problems(&list, &taints), Vec::<String>::new());
    // Everything is the service's own: its namespace and its servergroup.
    for obj in list["items"].as_array().unwrap() {
        assert_eq!(
            obj["metadata"]["labels"]["servergroup"], "kube-mw-experimental",
            "{obj}"
        );
        if obj["kind"] != "Namespace" {
            assert_eq!(obj["metadata"]["namespace"], "mw-experimental", "{obj}");
        }
    }
    let ds = item(&list, "DaemonSet", "mw-experimental");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(
        containers[0]["image"],
        format!("docker-registry.discovery.wmnet/restricted/mediawiki-multiversion:{TAG}")
    );
    // WMF's mw-experimental values: requests 1000m/3500Mi, limits 2000m/4000Mi.
    assert_eq!(
        containers[0]["resources"],
        json!({"requests": {"cpu": "1000m", "memory": "3500Mi"},
               "limits": {"cpu": "2000m", "memory": "4000Mi"}})
    );
    for c in containers {
        assert_eq!(c["securityContext"]["runAsUser"], 33);
        assert_eq!(c["securityContext"]["runAsGroup"], 33);
        // A read-only root, and an emptyDir of its own wherever the container writes.
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{c}");
        for dir in ["/tmp", "/run"] {
            let m = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == dir)
                .unwrap_or_else(|| panic!("{}: nothing mounted at {dir}", c["name"]));
            let v = ds["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap();
            assert!(v["emptyDir"].is_object(), "{v}");
        }
    }
    // MediaWiki never calls the API: no service account token in the pods.
    assert_eq!(
        ds["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    // The release file names a tag only; no sync recorded its digest, so the pin is waived on
    // the object, with its reason.
    let waivers: Vec<&str> = ds["metadata"]["annotations"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("checkov.io/skip"))
        .map(|(_, v)| v.as_str().unwrap())
        .collect();
    assert!(
        waivers.iter().any(|w| w.starts_with("CKV_K8S_43=")),
        "{waivers:?}"
    );
    assert!(waivers
        .iter()
        .all(|w| w.split_once('=').is_some_and(|(_, why)| why.len() > 20)));
    // The NetworkPolicy admits the NodePort's traffic on the web server's port, to these pods.
    let np = item(&list, "NetworkPolicy", "mw-experimental");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        ds["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8080);
    let svc = item(&list, "Service", "mw-experimental");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");

    // The check itself fails on what it must catch.
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut l = list.clone();
        for obj in l["items"].as_array_mut().unwrap() {
            if obj["kind"] == "DaemonSet" {
                f(&mut obj["spec"]["template"]["spec"]);
            }
        }
        production_problems(&l, &taints)
    };
    assert!(!mutate(&|p| p["containers"][1]["securityContext"]["runAsUser"] = json!(0)).is_empty());
    assert!(!mutate(&|p| {
        p["containers"][0]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("runAsUser");
        p["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("runAsUser");
    })
    .is_empty());
    assert!(!mutate(&|p| p["containers"][0]["image"] = json!("r.example/mw:latest")).is_empty());
    assert!(!mutate(&|p| p["containers"][1]["image"] = json!("r.example:5000/mw")).is_empty());
    assert!(!mutate(&|p| {
        p["containers"][1]
            .as_object_mut()
            .unwrap()
            .remove("resources");
    })
    .is_empty());
    assert!(!mutate(&|p| {
        p["tolerations"].as_array_mut().unwrap().pop();
    })
    .is_empty());
}

#[test]
fn pods_tolerate_every_configured_taint_and_select_exactly_the_labelled_nodes() {
    let name = node_name();
    let api = ApiServer::start(vec![node(
        &name,
        &[("team", "sre")],
        &[("foreign", "x", "NoSchedule")],
    )]);
    let images = tempfile::tempdir().unwrap();
    let w = kube_world(
        &api,
        &name,
        true,
        &format!("{EXTRA}{}", image_config(images.path())),
    );
    // The Node as the node component leaves it.
    run(&w, &api, &["apply", "node"]).0.code(0);
    let labelled = api.node(&name);

    let (out, _) = run(&w, &api, &["render"]);
    out.code(0);
    let parsed = kubectl_apply_dry_run(&api, &out.stdout, &["-o", "json"]);
    parsed.code(0);
    let list = parsed.json();
    let ds = item(&list, "DaemonSet", "mw-experimental");
    let pod = &ds["spec"]["template"]["spec"];
    let tolerations = pod["tolerations"].as_array().expect("tolerations");

    let cfg_taints = [
        json!({"key": "dedicated", "value": "mw-experimental", "effect": "NoSchedule"}),
        json!({"key": "dedicated", "value": "mw-experimental", "effect": "NoExecute"}),
        json!({"key": "example.org/debug-only", "value": "yes", "effect": "PreferNoSchedule"}),
        json!({"key": "example.org/no-value", "effect": "NoSchedule"}),
    ];
    for t in &cfg_taints {
        assert!(
            tolerations.iter().any(|tol| tolerates(tol, t)),
            "no toleration for configured taint {t}: {tolerations:?}"
        );
    }
    // Every managed taint the Node now carries is tolerated; the foreign one is not.
    for t in labelled["spec"]["taints"].as_array().unwrap() {
        let tolerated = tolerations.iter().any(|tol| tolerates(tol, t));
        assert_eq!(tolerated, t["key"] != "foreign", "taint {t}");
    }

    let affinity = &pod["affinity"];
    assert!(
        affinity_selects(affinity, &labelled),
        "the affinity does not select the labelled Node: {affinity}\n{labelled}"
    );
    for key in ["dedicated", "example.org/pool"] {
        let mut without = labelled.clone();
        without["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(key);
        assert!(
            !affinity_selects(affinity, &without),
            "the affinity selects a Node without {key}"
        );
        let mut other = labelled.clone();
        other["metadata"]["labels"][key] = json!("something-else");
        assert!(
            !affinity_selects(affinity, &other),
            "the affinity selects a Node with {key}=something-else"
        );
    }

    // The code tree: the node's code.path, read-only in every container.
    let volumes = pod["volumes"].as_array().unwrap();
    let code = volumes
        .iter()
        .find(|v| v["hostPath"].is_object())
        .expect("a hostPath volume");
    assert_eq!(code["hostPath"]["path"], w.code.display().to_string());
    for c in pod["containers"].as_array().unwrap() {
        for m in c["volumeMounts"].as_array().unwrap() {
            if m["name"] == code["name"] {
                assert_eq!(m["readOnly"], true, "{c}");
                assert_eq!(m["mountPath"], "/srv/mediawiki");
            }
        }
    }
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"]["servergroup"],
        "kube-mw-experimental"
    );

    let php = item(&list, "ConfigMap", "mw-experimental-php");
    let ini = php["data"].as_object().unwrap().values().next().unwrap();
    let ini = ini.as_str().unwrap();
    assert!(ini.contains("opcache.validate_timestamps=1"), "{ini}");
    assert!(ini.contains("opcache.revalidate_freq=0"), "{ini}");

    let svc = item(&list, "Service", "mw-experimental");
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(
        svc["spec"]["selector"]["app"],
        ds["spec"]["selector"]["matchLabels"]["app"]
    );
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 4456);
}

#[test]
fn render_without_labels_is_refused() {
    let w = World::new("node_name: exp1\nkubernetes: { labels: {} }\n");
    w.run(&["render"])
        .code(2)
        .stderr_has("kubernetes.labels is empty");
}

#[test]
fn render_without_a_known_image_says_what_to_do() {
    let w = World::new("node_name: exp1\n");
    w.run(&["render"])
        .code(2)
        .stderr_has("never synced")
        .stderr_has("image.release_file");
    let w = World::new("node_name: exp1\nservice: { webserver_image: \"r.example/web:latest\" }\n");
    w.run(&["render"])
        .code(2)
        .stderr_has("service.webserver_image");
}

#[test]
fn helmfile_values_overlay_uses_the_charts_keys() {
    let w = World::new(&format!("node_name: exp1\nkubernetes:\n{EXTRA}"));
    let out = w.run(&["render", "--helmfile-values"]);
    out.code(0);
    let v: Value = serde_saphyr::from_str(&out.stdout).expect("YAML");
    assert_eq!(v["mw"]["experimental"]["enabled"], true);
    assert_eq!(v["php"]["devel_mode"], true);
    assert_eq!(
        v["affinity"]["nodeSelector"],
        json!({"dedicated": "mw-experimental", "example.org/pool": "exp-debug"})
    );
    let tolerations = v["tolerations"].as_array().unwrap();
    assert_eq!(tolerations.len(), 4);
    assert!(tolerations
        .contains(&json!({"key": "dedicated", "value": "mw-experimental", "effect": "NoExecute"})));
    assert!(tolerations.contains(
        &json!({"key": "example.org/no-value", "operator": "Exists", "effect": "NoSchedule"})
    ));
    assert_eq!(v["main_app"]["requests"]["cpu"], "1000m");
    assert_eq!(v["main_app"]["limits"]["memory"], "4000Mi");
    assert_eq!(v["mesh"]["public_port"], 4456);
}
