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

#[test]
fn rendered_manifests_pass_kubectl_apply_dry_run() {
    let name = node_name();
    let api = ApiServer::start(vec![node(&name, &[], &[])]);
    let w = kube_world(&api, &name, true, EXTRA);
    let (out, _) = run(
        &w,
        &api,
        &["render", "--node", &name, "--node", "exp2=10.64.0.2"],
    );
    out.code(0);
    let yaml = out.stdout;
    let applied = kubectl_apply_dry_run(&api, &yaml, &[]);
    applied.code(0);
    for obj in [
        "configmap/mw-experimental-php created (dry run)",
        "daemonset.apps/mw-experimental created (dry run)",
        "service/mw-experimental created (dry run)",
        "configmap/mw-experimental-xwd-routing created (dry run)",
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
        .any(|r| r.path == "/apis/apps/v1/namespaces/default/daemonsets/mw-experimental"));
    assert!(
        api.log().iter().all(|r| r.method == "GET"),
        "a dry run wrote"
    );
}

#[test]
fn pods_tolerate_every_configured_taint_and_select_exactly_the_labelled_nodes() {
    let name = node_name();
    let api = ApiServer::start(vec![node(
        &name,
        &[("team", "sre")],
        &[("foreign", "x", "NoSchedule")],
    )]);
    let w = kube_world(&api, &name, true, EXTRA);
    // The Node as the node component leaves it.
    run(&w, &api, &["apply", "node"]).0.code(0);
    let labelled = api.node(&name);

    let (out, _) = run(&w, &api, &["render", "--node", &name]);
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
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();

    let routing = item(&list, "ConfigMap", "mw-experimental-xwd-routing");
    assert_eq!(
        routing["data"],
        json!({ name.clone(): format!("{name}:{node_port}") })
    );
}

#[test]
fn render_without_labels_is_refused() {
    let w = World::new("node_name: exp1\nkubernetes: { labels: {} }\n");
    w.run(&["render"])
        .code(2)
        .stderr_has("kubernetes.labels is empty");
}

#[test]
fn render_routes_to_this_node_by_default() {
    let w = World::new("node_name: wikikube-worker-exp1001.eqiad.wmnet\n");
    let out = w.run(&["render"]);
    out.code(0);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out.stdout).expect("YAML documents");
    let routing = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "mw-experimental-xwd-routing")
        .expect("routing ConfigMap");
    assert_eq!(
        routing["data"],
        json!({"wikikube-worker-exp1001.eqiad.wmnet": "wikikube-worker-exp1001.eqiad.wmnet:30880"})
    );
    w.run(&["render", "--node", "a=b c"])
        .code(2)
        .stderr_has("NAME=HOST");
}
