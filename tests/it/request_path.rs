//! The promise, end to end, with the real pieces: the image comes from a registry (Debian's
//! docker-registry, pushed with skopeo) through containerd as the release values file names it;
//! `sync` writes the tree; Debian's php8.2-fpm runs with the php settings taken from the objects
//! `render` produced (as kubectl parses them), as the uid they name; nginx listens where the
//! `routing` entry for the node points (evaluated by lua5.1). A deployer member's edit is served
//! by the very next request, though opcache had the file cached; a new image keeps the edit and
//! brings its other changes; `reset` brings the image's version back.

use crate::support::containerd::Containerd;
use crate::support::kube::{node_name, run};
use crate::support::kube_api::{node, ApiServer};
use crate::support::oci::{put, Layout};
use crate::support::perm::{GroupGuard, UserGuard};
use crate::support::web::{free_port, http_get, Nginx, PhpFpm, Registry};
use crate::support::*;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const NAME: &str = "restricted/mediawiki-multiversion";
const V1: &str = "2024-08-08-135932-publish";
const V2: &str = "2024-08-09-101010-publish";

/// The image's files, with the build's mtime (as a real build has: older than any edit).
fn mediawiki(root: &Path, version: &str, mtime: &str) {
    let t = root.join("srv/mediawiki");
    put(
        &t,
        "w/index.php",
        &format!("<?php echo 'index {version}';\n"),
    );
    put(
        &t,
        "w/other.php",
        &format!("<?php echo 'other {version}';\n"),
    );
    put(
        &t,
        "w/opcache.php",
        "<?php echo json_encode(['cached' => opcache_is_script_cached(__DIR__ . '/index.php'),\n\
         'validate_timestamps' => ini_get('opcache.validate_timestamps'),\n\
         'revalidate_freq' => ini_get('opcache.revalidate_freq'), 'uid' => posix_geteuid()]);\n",
    );
    sh(Command::new("find")
        .arg(&t)
        .args(["-exec", "touch", "-h", "-d", mtime, "{}", "+"]));
}

fn release_file(p: &Path, registry: &str, tag: &str) {
    std::fs::write(
        p,
        format!(
            "docker:\n  registry: {registry}\nmain_app:\n  image: {NAME}:{tag}\nmw:\n  httpd:\n    image_tag: restricted/mediawiki-webserver:{tag}\n"
        ),
    )
    .unwrap();
}

fn get(port: u16, path: &str) -> String {
    let r = http_get("127.0.0.1", port, path).expect("HTTP request");
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    r.body
}

/// The rendered objects as kubectl parses them (`apply --dry-run=client -o json`).
fn rendered(w: &World, api: &ApiServer) -> Value {
    let (out, _) = run(w, api, &["render"]);
    out.code(0);
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .env(
            "KUBECACHEDIR",
            api.kubeconfig().parent().unwrap().join("kubectl-cache"),
        )
        .args([
            "apply",
            "--dry-run=client",
            "--validate=false",
            "-o",
            "json",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(out.stdout.as_bytes())
        .unwrap();
    let o = Out::of(child.wait_with_output().unwrap());
    o.code(0);
    o.json()
}

#[test]
fn an_edit_is_served_by_the_next_request_and_survives_a_new_image_until_reset() {
    for tool in ["php-fpm8.2", "nginx", "docker-registry", "lua5.1"] {
        assert!(have(tool), "{tool} is missing: run tests/install-deps");
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"));
    // Pulls go through containerd's CRI image service, as the kubelet's do.
    let ctrd = Containerd::start_cri(&reg);
    let layout = Layout::new(tmp.path());
    layout.image(V1, None, |r| mediawiki(r, "v1", "2020-01-01 00:00:00"));
    layout.image(V2, Some(V1), |r| mediawiki(r, "v2", "2021-01-01 00:00:00"));
    reg.push(&layout.dir, V1, &format!("{NAME}:{V1}"));
    let rel = tmp.path().join("mw-experimental-pinkllama-eqiad.yaml");
    release_file(&rel, &reg.host(), V1);

    // The node, as its kubelet registered it.
    let name = node_name();
    let mut n = node(&name, &[("topology.kubernetes.io/region", "eqiad")], &[]);
    n["status"]["addresses"] = json!([{"type": "InternalIP", "address": "127.0.0.1"}]);
    let api = ApiServer::start(vec![n]);

    let group = GroupGuard::reserve();
    let member = UserGuard::create();
    let port = free_port();
    let w = World::new("");
    w.write_config(&format!(
        "enabled: true\nnode_name: {name}\n\
         code: {{ path: {code}, owner: root, mode: \"2775\" }}\n\
         deployers: {{ group: {g}, gid: {gid}, members: [{m}] }}\n\
         kubernetes: {{ kubeconfig: {kc}, timeout_seconds: 5 }}\n\
         image:\n  containerd_address: {sock}\n  repository: {repo}/{NAME}\n  release_file: {rel}\n\
         service: {{ node_port: {port} }}\n",
        code = w.code.display(),
        g = group.name,
        gid = group.gid,
        m = member.name,
        kc = api.kubeconfig().display(),
        sock = ctrd.socket.display(),
        repo = reg.host(),
        rel = rel.display(),
    ));
    // php-fpm, nginx (www-data) and the member must reach the tree through the world's dir.
    std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // The node: group, permissions, labels; then the code the release file names, pulled.
    run(&w, &api, &["apply"]).0.code(0);
    run(&w, &api, &["sync"]).0.code(0);
    run(&w, &api, &["apply", "permissions"]).0.code(0);
    assert_eq!(
        std::fs::read_to_string(w.code.join("w/index.php")).unwrap(),
        "<?php echo 'index v1';\n"
    );

    // php-fpm with the settings the rendered objects carry, as the user they name.
    let objects = rendered(&w, &api);
    let items = objects["items"].as_array().unwrap();
    let ds = items.iter().find(|i| i["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let app = &pod["containers"][0];
    assert_eq!(
        app["image"],
        format!("{}/{NAME}:{V1}", reg.host()),
        "the pods run the release file's image"
    );
    let scan = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "PHP_INI_SCAN_DIR")
        .expect("PHP_INI_SCAN_DIR")["value"]
        .as_str()
        .unwrap()
        .to_string();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"].is_object())
        .expect("php settings volume");
    let mount = app["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("php settings mount");
    assert_eq!(scan, format!(":{}", mount["mountPath"].as_str().unwrap()));
    let cm = items
        .iter()
        .find(|i| i["kind"] == "ConfigMap" && i["metadata"]["name"] == volume["configMap"]["name"])
        .expect("php settings ConfigMap");
    let ini_dir = tmp.path().join("php-ini");
    std::fs::create_dir_all(&ini_dir).unwrap();
    for (file, text) in cm["data"].as_object().unwrap() {
        std::fs::write(ini_dir.join(file), text.as_str().unwrap()).unwrap();
    }
    let uid = app["securityContext"]["runAsUser"].as_u64().unwrap();
    assert_eq!(
        sh(Command::new("id").args(["-u", "www-data"])).trim(),
        uid.to_string(),
        "php-fpm's workers run as www-data, the uid the pod runs as"
    );
    let fpm = PhpFpm::start(&tmp.path().join("php-fpm"), &ini_dir);

    // nginx where the routing entry for this node points.
    let (out, _) = run(&w, &api, &["routing"]);
    out.code(0);
    let backend = format!("k8s-mw-experimental-eqiad-{name}");
    let lua = tmp.path().join("route.lua");
    std::fs::write(
        &lua,
        format!(
            "local debug_map = {{\n{}}}\nlocal t = debug_map[\"{backend}\"]\nprint(t.host .. \" \" .. t.port)\n",
            out.stdout
        ),
    )
    .unwrap();
    let target = sh(Command::new("lua5.1").arg(&lua));
    let (host, port_s) = target.trim().split_once(' ').unwrap();
    assert_eq!(host, "127.0.0.1");
    let routed: u16 = port_s.parse().unwrap();
    assert_eq!(routed, port);
    let _nginx = Nginx::start(&tmp.path().join("nginx"), routed, &w.code, &fpm.socket);

    // Served, and cached by opcache, which revalidates on every request.
    assert_eq!(get(routed, "/w/index.php"), "index v1");
    assert_eq!(get(routed, "/w/index.php"), "index v1");
    let op: Value = serde_json::from_str(&get(routed, "/w/opcache.php")).unwrap();
    assert_eq!(
        op,
        json!({"cached": true, "validate_timestamps": "1", "revalidate_freq": "0", "uid": 33}),
        "php-fpm log: {}",
        fpm.daemon.log_text()
    );

    // A deployer member (not root) edits the file: the very next request runs the edit.
    let edit = tmp.path().join("edit.php");
    std::fs::write(&edit, "<?php echo 'index edited by a deployer';\n").unwrap();
    std::fs::set_permissions(&edit, std::fs::Permissions::from_mode(0o644)).unwrap();
    let index = w.code.join("w/index.php");
    member
        .run(&["cp", edit.to_str().unwrap(), index.to_str().unwrap()])
        .code(0);
    assert_eq!(get(routed, "/w/index.php"), "index edited by a deployer");

    // A new image and sync: the edit is still served, and the image's other changes are.
    reg.push(&layout.dir, V2, &format!("{NAME}:{V2}"));
    release_file(&rel, &reg.host(), V2);
    let (out, _) = run(&w, &api, &["sync"]);
    out.code(0);
    assert_eq!(get(routed, "/w/index.php"), "index edited by a deployer");
    assert_eq!(get(routed, "/w/other.php"), "other v2");

    // reset: the image's version on the next request.
    run(&w, &api, &["reset", index.to_str().unwrap()]).0.code(0);
    assert_eq!(get(routed, "/w/index.php"), "index v2");
}
