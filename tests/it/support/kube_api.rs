//! A Kubernetes API server for tests: the real HTTP API over TLS, in process, for the real
//! `kubectl`.
//!
//! There is no API server on the test machine, and the `node` component and `render` must be
//! tested against the client that production uses. So each test starts its own server on a
//! thread, on its own 127.0.0.1 ephemeral port, with a fresh CA and server certificate and a
//! bearer token written into a kubeconfig. It serves what kubectl asks for (discovery, `GET` and
//! `PATCH` on Nodes with JSON merge-patch and strategic-merge-patch semantics, `GET` on namespaced
//! objects for `apply --dry-run=client`), logs every request, and fails on demand (a status code,
//! a hang, a closed port, a write conflict).

#![allow(dead_code)]

use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub accept: String,
    pub body: String,
    /// Whether it carried the right bearer token.
    pub authorized: bool,
}

impl Request {
    pub fn is_patch_of_node(&self, name: &str) -> bool {
        self.method == "PATCH" && self.path == format!("/api/v1/nodes/{name}")
    }
}

/// What the server does wrong, on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer properly.
    None,
    /// Requests on Node objects get this status (with a real Status body); discovery works,
    /// as it does for a user whom RBAC forbids to touch Nodes.
    NodeStatus(u16),
    /// Only PATCH on Node objects gets this status.
    PatchStatus(u16),
    /// Every connection is accepted and read, and never answered.
    Hang,
    /// The port is closed: connections are refused.
    Down,
    /// The next PATCH of a Node first changes the Node as a concurrent writer would (a foreign
    /// label `concurrent/writer=1` and a new resourceVersion), then is judged against it.
    ConcurrentWriteOnce,
}

struct Shared {
    nodes: Mutex<BTreeMap<String, Value>>,
    log: Mutex<Vec<Request>>,
    fault: Mutex<Fault>,
    fault_changed: Condvar,
    resource_version: Mutex<u64>,
    token: String,
    shutdown: AtomicBool,
    addr: SocketAddr,
}

/// A running server; dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Node object as a kubelet registers it, with `labels` and `taints` (`(key, value, effect)`).
pub fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str, &str)]) -> Value {
    let mut l = Map::new();
    l.insert("kubernetes.io/hostname".into(), json!(name));
    l.insert("kubernetes.io/os".into(), json!("linux"));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    let taints: Vec<Value> = taints
        .iter()
        .map(|(k, v, e)| {
            let mut t = json!({"key": k, "effect": e});
            if !v.is_empty() {
                t["value"] = json!(v);
            }
            if *e == "NoExecute" {
                t["timeAdded"] = json!("2025-12-31T00:00:00Z");
            }
            t
        })
        .collect();
    let mut n = json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": l, "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"podCIDR": "10.64.0.0/24"},
        "status": {"nodeInfo": {"kubeletVersion": "v1.32.4"}}
    });
    if !taints.is_empty() {
        n["spec"]["taints"] = json!(taints);
    }
    n
}

impl ApiServer {
    /// Starts a server holding `nodes` (Node objects, e.g. from [`node`]).
    pub fn start(nodes: Vec<Value>) -> ApiServer {
        let dir = tempfile::Builder::new()
            .prefix("kube-api-")
            .tempdir()
            .expect("tempdir");
        let crate::support::tls::TestCert {
            ca_pem,
            cert_der,
            key_der,
            ..
        } = crate::support::tls::server_cert("kube-apiserver");
        let tls = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .expect("server certificate"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let token = format!("test-token-{}", crate::support::unique("t"));
        let mut rv = 100;
        let mut map = BTreeMap::new();
        for mut n in nodes {
            rv += 1;
            n["metadata"]["resourceVersion"] = json!(rv.to_string());
            let name = n["metadata"]["name"]
                .as_str()
                .expect("node name")
                .to_string();
            map.insert(name, n);
        }
        let shared = Arc::new(Shared {
            nodes: Mutex::new(map),
            log: Mutex::new(Vec::new()),
            fault: Mutex::new(Fault::None),
            fault_changed: Condvar::new(),
            resource_version: Mutex::new(rv),
            token,
            shutdown: AtomicBool::new(false),
            addr,
        });
        let kubeconfig = dir.path().join("kubeconfig");
        let b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {b64}\nusers:\n- name: test\n  user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\n",
                shared.token
            ),
        )
        .expect("write kubeconfig");
        let accept = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared, tls))
        };
        ApiServer {
            shared,
            accept: Some(accept),
            dir,
            kubeconfig,
        }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// The PATCH requests on Node `name` so far.
    pub fn patches(&self, name: &str) -> Vec<Request> {
        self.log()
            .into_iter()
            .filter(|r| r.is_patch_of_node(name))
            .collect()
    }

    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.shared.fault) = fault;
        self.shared.fault_changed.notify_all();
        // Down: wake the accept loop (blocked in accept) so that it closes the port now; it
        // reopens the port itself when the fault is lifted.
        if fault == Fault::Down {
            let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_millis(200));
        }
        // Wait until the port is in the state asked for.
        for _ in 0..200 {
            let up = TcpStream::connect_timeout(&self.shared.addr, Duration::from_millis(100))
                .map(drop)
                .is_ok();
            if up == (fault != Fault::Down) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the test API server did not reach fault state {fault:?}");
    }

    /// The Node as the server holds it (`Value::Null` when there is none).
    pub fn node(&self, name: &str) -> Value {
        lock(&self.shared.nodes)
            .get(name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Stores `node` (replacing one of the same name), with a new resourceVersion.
    pub fn put_node(&self, mut node: Value) {
        let name = node["metadata"]["name"]
            .as_str()
            .expect("node name")
            .to_string();
        node["metadata"]["resourceVersion"] = json!(next_rv(&self.shared));
        lock(&self.shared.nodes).insert(name, node);
    }

    /// The Node's labels as a map.
    pub fn labels(&self, name: &str) -> BTreeMap<String, String> {
        self.node(name)["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Node's taints as `key=value:effect` strings, in order.
    pub fn taints(&self, name: &str) -> Vec<String> {
        self.node(name)["spec"]["taints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        format!(
                            "{}={}:{}",
                            t["key"].as_str().unwrap_or_default(),
                            t["value"].as_str().unwrap_or_default(),
                            t["effect"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.fault_changed.notify_all();
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_millis(200));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn next_rv(shared: &Shared) -> String {
    let mut rv = lock(&shared.resource_version);
    *rv += 1;
    rv.to_string()
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Arc<rustls::ServerConfig>) {
    let mut listener = Some(listener);
    loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Some(l) = &listener else {
            // Down: wait until the fault is lifted, then reopen the same port.
            let mut f = lock(&shared.fault);
            while *f == Fault::Down && !shared.shutdown.load(Ordering::SeqCst) {
                f = shared
                    .fault_changed
                    .wait_timeout(f, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            drop(f);
            if shared.shutdown.load(Ordering::SeqCst) {
                return;
            }
            listener = Some(TcpListener::bind(shared.addr).expect("rebind the test port"));
            continue;
        };
        let stream = match l.accept() {
            Ok((s, _)) => s,
            Err(_) => continue,
        };
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        if *lock(&shared.fault) == Fault::Down {
            drop(stream);
            listener = None;
            continue;
        }
        let shared = shared.clone();
        let tls = tls.clone();
        std::thread::spawn(move || {
            let _ = serve_connection(stream, &shared, tls);
        });
    }
}

/// A stream that is the TLS session over the socket.
type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn serve_connection(
    stream: TcpStream,
    shared: &Shared,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, stream));
    loop {
        let Some(req) = read_request(&mut reader, shared)? else {
            return Ok(());
        };
        lock(&shared.log).push(req.clone());
        let fault = *lock(&shared.fault);
        if fault == Fault::Hang {
            // Never answer; hold the connection until the fault is lifted or the server stops.
            let mut f = lock(&shared.fault);
            while *f == Fault::Hang && !shared.shutdown.load(Ordering::SeqCst) {
                f = shared
                    .fault_changed
                    .wait_timeout(f, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            return Ok(());
        }
        let (code, body) = handle(&req, shared, fault);
        write_response(reader.get_mut(), code, &body)?;
    }
}

fn read_request(reader: &mut BufReader<Tls>, shared: &Shared) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let authorized = headers
        .get("authorization")
        .is_some_and(|v| *v == format!("Bearer {}", shared.token));
    Ok(Some(Request {
        method,
        path,
        query,
        content_type: headers.get("content-type").cloned().unwrap_or_default(),
        accept: headers.get("accept").cloned().unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
        authorized,
    }))
}

fn write_response(stream: &mut Tls, code: u16, body: &Value) -> std::io::Result<()> {
    let text = serde_json::to_vec(body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-cache, private\r\n\r\n",
        reason(code),
        text.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&text)?;
    stream.flush()
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A `Status` object as the API server sends with every failure.
pub fn status(code: u16, reason: &str, message: &str, details: Value) -> (u16, Value) {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    });
    if !details.is_null() {
        s["details"] = details;
    }
    (code, s)
}

fn status_for(code: u16, what: &str) -> (u16, Value) {
    match code {
        403 => status(
            403,
            "Forbidden",
            &format!("{what} is forbidden: User \"system:serviceaccount:test:mw-experimental\" cannot do this"),
            Value::Null,
        ),
        404 => status(404, "NotFound", &format!("{what} not found"), Value::Null),
        409 => status(409, "Conflict", &format!("Operation cannot be fulfilled on {what}"), Value::Null),
        500 => status(500, "InternalError", "Internal error occurred: injected fault", Value::Null),
        503 => status(503, "ServiceUnavailable", "the server is currently unable to handle the request", Value::Null),
        c => status(c, "Unknown", "injected fault", Value::Null),
    }
}

fn core_resources() -> Value {
    let r = |name: &str, kind: &str, namespaced: bool, short: &[&str]| {
        json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced,
               "kind": kind, "shortNames": short,
               "verbs": ["create","delete","get","list","patch","update","watch"]})
    };
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            r("nodes", "Node", false, &["no"]),
            r("namespaces", "Namespace", false, &["ns"]),
            r("configmaps", "ConfigMap", true, &["cm"]),
            r("services", "Service", true, &["svc"]),
            r("pods", "Pod", true, &["po"]),
        ]
    })
}

fn apps_resources() -> Value {
    let r = |name: &str, kind: &str, short: &[&str]| {
        json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true,
               "kind": kind, "shortNames": short, "categories": ["all"],
               "verbs": ["create","delete","get","list","patch","update","watch"]})
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "apps/v1",
        "resources": [
            r("daemonsets", "DaemonSet", &["ds"]),
            r("deployments", "Deployment", &["deploy"]),
        ]
    })
}

/// The answer to one request: status code and JSON body.
fn handle(req: &Request, shared: &Shared, fault: Fault) -> (u16, Value) {
    if !req.authorized {
        return status(401, "Unauthorized", "Unauthorized", Value::Null);
    }
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let is_node = segs.len() >= 3 && segs[..3] == ["api", "v1", "nodes"];
    if is_node {
        if let Fault::NodeStatus(c) = fault {
            return status_for(c, &format!("nodes \"{}\"", segs.get(3).unwrap_or(&"")));
        }
        if let (Fault::PatchStatus(c), "PATCH") = (fault, req.method.as_str()) {
            return status_for(c, &format!("nodes \"{}\"", segs.get(3).unwrap_or(&"")));
        }
    }
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["version"]) => (
            200,
            json!({"major": "1", "minor": "32", "gitVersion": "v1.32.4", "gitCommit": "test",
                   "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                   "goVersion": "go1.23.8", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        ("GET", ["api"]) => (
            200,
            json!({"kind": "APIVersions", "versions": ["v1"],
                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                   "serverAddress": shared.addr.to_string()}]}),
        ),
        ("GET", ["apis"]) => (
            200,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "apps",
                 "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}
            ]}),
        ),
        ("GET", ["api", "v1"]) => (200, core_resources()),
        ("GET", ["apis", "apps", "v1"]) => (200, apps_resources()),
        ("GET", ["api", "v1", "nodes"]) => {
            let selector = query_param(&req.query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = lock(&shared.nodes)
                .values()
                .filter(|n| selects(&selector, &n["metadata"]["labels"]))
                .cloned()
                .collect();
            (
                200,
                json!({"kind": "NodeList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": lock(&shared.resource_version).to_string()},
                       "items": items}),
            )
        }
        ("GET", ["api", "v1", "nodes", name]) => match lock(&shared.nodes).get(*name) {
            Some(n) => (200, n.clone()),
            None => not_found("nodes", name),
        },
        ("PATCH", ["api", "v1", "nodes", name]) => patch_node(req, shared, name, fault),
        // Namespaced objects: none exist (enough for `kubectl apply --dry-run=client`).
        ("GET", ["api", "v1", "namespaces", _, res, name])
        | ("GET", ["apis", "apps", "v1", "namespaces", _, res, name]) => not_found(res, name),
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Value::Null,
        ),
    }
}

/// A query parameter, percent-decoded (`+` is a space, as Go's `url.ParseQuery` has it).
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| {
            let b = v.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'%' if i + 2 < b.len() => {
                        let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                        out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                        i += 3;
                    }
                    b'+' => {
                        out.push(b' ');
                        i += 1;
                    }
                    c => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    })
}

/// Kubernetes' equality-based label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma = and);
/// an empty selector selects everything.
fn selects(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .all(|req| {
            if let Some((k, v)) = req.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = req.strip_prefix('!') {
                labels[k.trim()].is_null()
            } else {
                !labels[req].is_null()
            }
        })
}

fn not_found(resource: &str, name: &str) -> (u16, Value) {
    let group = if ["daemonsets", "deployments"].contains(&resource) {
        "apps"
    } else {
        ""
    };
    status(
        404,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
        json!({"name": name, "group": group, "kind": resource}),
    )
}

fn patch_node(req: &Request, shared: &Shared, name: &str, fault: Fault) -> (u16, Value) {
    let patch: Value = match serde_json::from_str(&req.body) {
        Ok(p) => p,
        Err(e) => {
            return status(
                400,
                "BadRequest",
                &format!("error decoding patch: {e}"),
                Value::Null,
            )
        }
    };
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let strategic = match ct {
        "application/merge-patch+json" => false,
        "application/strategic-merge-patch+json" => true,
        other => {
            return status(
                415,
                "UnsupportedMediaType",
                &format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"),
                Value::Null,
            )
        }
    };
    let mut nodes = lock(&shared.nodes);
    let Some(current) = nodes.get_mut(name) else {
        return not_found("nodes", name);
    };
    if fault == Fault::ConcurrentWriteOnce {
        current["metadata"]["labels"]["concurrent/writer"] = json!("1");
        current["metadata"]["resourceVersion"] = json!(next_rv(shared));
        *lock(&shared.fault) = Fault::None;
    }
    let want_rv = patch["metadata"]["resourceVersion"].as_str();
    let have_rv = current["metadata"]["resourceVersion"].as_str();
    if want_rv.is_some() && want_rv != have_rv {
        return status(
            409,
            "Conflict",
            &format!("Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            json!({"name": name, "kind": "nodes"}),
        );
    }
    let mut next = current.clone();
    if strategic {
        if let Err(e) = strategic_merge(&mut next, &patch) {
            return status(400, "BadRequest", &e, Value::Null);
        }
    } else {
        merge_patch(&mut next, &patch);
    }
    if let Err((field, e)) = validate_node(&next) {
        return status(
            422,
            "Invalid",
            &format!("Node \"{name}\" is invalid: {field}: {e}"),
            json!({"name": name, "kind": "Node",
                   "causes": [{"reason": "FieldValueInvalid", "message": e, "field": field}]}),
        );
    }
    // NoExecute taints carry the time they were added (the taint manager counts
    // tolerationSeconds from it); stamp the ones that come without, so that clients must not
    // take the field for drift.
    if let Some(taints) = next["spec"]["taints"].as_array_mut() {
        for t in taints {
            if t["effect"] == "NoExecute" && t.get("timeAdded").is_none_or(Value::is_null) {
                t["timeAdded"] = json!("2026-01-01T00:00:00Z");
            }
        }
    }
    // Fields the client may not change.
    next["metadata"]["name"] = json!(name);
    next["metadata"]["uid"] = current["metadata"]["uid"].clone();
    next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if next != *current {
        next["metadata"]["resourceVersion"] = json!(next_rv(shared));
        *current = next;
    }
    (200, current.clone())
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge patch, for the fields of a Node that kubectl's label, taint and patch
/// commands send: maps merge key by key (`null` deletes), and lists are replaced whole, as for
/// `spec.taints`, which has no `patchMergeKey` in the Kubernetes API (so `kubectl taint` sends
/// the whole new list). `$setElementOrder/...` directives are accepted and ignored, `$patch:
/// replace`/`delete` on a map are honoured; a list directive is refused, as the server would for
/// a list without a merge key.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut v = patch.clone();
            v.as_object_mut().expect("object").remove("$patch");
            *target = v;
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown patch directive $patch: {other}")),
        None => {}
    }
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if k.starts_with("$deleteFromPrimitiveList/") {
            return Err(format!("{k} is not supported by this test server"));
        }
        if v.is_null() {
            t.remove(k);
        } else if v.is_object() {
            let slot = t.entry(k.clone()).or_insert(Value::Null);
            strategic_merge(slot, v)?;
            if slot.is_null() {
                t.remove(k);
            }
        } else {
            if let Value::Array(items) = v {
                if items
                    .iter()
                    .any(|i| i.get("$patch").is_some() || i.get("$retainKeys").is_some())
                {
                    return Err(format!(
                        "list {k} has no merge key: patch directives in it are not allowed"
                    ));
                }
            }
            t.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

/// What the real API server's Node validation would refuse, as far as labels and taints go.
/// Returns the offending field and why.
fn validate_node(n: &Value) -> Result<(), (String, String)> {
    if let Some(labels) = n["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !v.is_string() {
                return Err((
                    format!("metadata.labels[{k}]"),
                    "label values must be strings".into(),
                ));
            }
        }
    } else if !n["metadata"]["labels"].is_null() {
        return Err(("metadata.labels".into(), "must be a map".into()));
    }
    let taints = &n["spec"]["taints"];
    if taints.is_null() {
        return Ok(());
    }
    let Some(list) = taints.as_array() else {
        return Err(("spec.taints".into(), "must be a list".into()));
    };
    let mut seen = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let key = t["key"].as_str().unwrap_or_default();
        let effect = t["effect"].as_str().unwrap_or_default();
        if key.is_empty() {
            return Err((format!("spec.taints[{i}].key"), "Required value".into()));
        }
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            return Err((
                format!("spec.taints[{i}].effect"),
                format!("Unsupported value: {effect:?}"),
            ));
        }
        if seen.contains(&(key, effect)) {
            return Err((
                format!("spec.taints[{i}]"),
                format!("Duplicate value: \"{key}:{effect}\": taints must be unique by key and effect pair"),
            ));
        }
        seen.push((key, effect));
    }
    Ok(())
}
