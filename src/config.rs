//! The configuration file: its schema, built-in defaults and validation.
//!
//! Puppet writes `/etc/mw-experimental/config.yaml` from Hiera; engineers never do. So the file is
//! checked hard, before anything runs: an unknown key, a bad path, a label Kubernetes would reject
//! all stop the tool with a message that names the file and the key, and nothing is written.
//!
//! (Over 500 lines: the schema and the validation of every key stay in one file, so a new key
//! is added, defaulted and checked in one place.)

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component as PathComponent, Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/mw-experimental/config.yaml";

/// The resolved configuration every other module takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub enabled: bool,
    /// The Node object's name; `None`: the kubelet's default, this host's name lower-cased.
    pub node_name: Option<String>,
    pub code: Code,
    pub deployers: Deployers,
    pub kubernetes: Kubernetes,
    pub image: Image,
    pub service: Service,
    pub state_dir: PathBuf,
    pub metrics_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Code {
    pub path: PathBuf,
    pub owner: String,
    /// The root directory's mode, as an octal string (`"2775"`).
    pub mode: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deployers {
    pub group: String,
    pub gid: u32,
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kubernetes {
    pub kubectl: String,
    pub kubeconfig: Option<PathBuf>,
    pub timeout_seconds: u64,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub effect: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    Containerd,
    OciLayout,
    Directory,
}

/// How a containerd image's tree is read (`image.read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageRead {
    /// Snapshots when containerd has them unpacked, else the layer blobs.
    Auto,
    /// The layer blobs, streamed and checked against their digests.
    Blobs,
    /// The snapshots containerd unpacked (a read-only view); an error when there are none.
    Snapshots,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Image {
    pub source: ImageSource,
    pub containerd_address: PathBuf,
    pub namespace: String,
    pub repository: String,
    /// The tree's path inside the image.
    pub path: PathBuf,
    /// The OCI layout or directory, for those sources.
    pub location: Option<PathBuf>,
    /// WMF's release values file (scap writes it on the deployment server, e.g.
    /// `/etc/helmfile-defaults/mediawiki/release/mw-experimental-pinkllama-eqiad.yaml`): when
    /// set, `sync` takes exactly the image it names instead of the newest.
    pub release_file: Option<PathBuf>,
    /// Which key of the release file names the image (dotted), e.g. `main_app.image`; the
    /// registry comes from `docker.registry` in the same file.
    pub release_key: String,
    /// Pull the release file's image through containerd when the node does not have it.
    pub pull: bool,
    /// The longest one pull may take, 1..=3600.
    pub pull_timeout_seconds: u64,
    /// The most bytes one layer may unpack to: a decompression bomb stops here, with an error.
    pub max_layer_bytes: u64,
    /// The most entries one layer may hold (a layer of tiny entries cannot exhaust memory).
    pub max_layer_entries: u64,
    /// The bound of `state_dir/layers` (what each layer chain contributed to the tree, so a new
    /// image that shares lower layers reads only its new ones); 0 turns it off.
    pub layer_cache_bytes: u64,
    /// containerd source: read the layer blobs, the snapshots containerd unpacked, or (auto)
    /// the snapshots when they are there.
    pub read: ImageRead,
}

/// The Kubernetes objects `render` writes (the service side of the switch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    /// The namespace of every namespaced object (WMF: `mw-experimental`).
    pub namespace: String,
    /// The NodePort the X-Wikimedia-Debug entries name (WMF's mesh public port: 4456).
    pub node_port: u16,
    /// The php-fpm (MediaWiki) container's resources (WMF's mw-experimental values).
    pub resources: Resources,
    /// The web server container's resources (the mediawiki chart's `php.httpd` defaults).
    pub webserver_resources: Resources,
    /// The web server image (registry/name:tag); `None`: the release file's `mw.httpd.image_tag`.
    pub webserver_image: Option<String>,
    /// The X-Wikimedia-Debug backend names start with this, then the data centre and the node.
    pub routing_prefix: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub requests: Quantities,
    pub limits: Quantities,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantities {
    pub cpu: String,
    pub memory: String,
}

impl Resources {
    fn of(rc: &str, rm: &str, lc: &str, lm: &str) -> Resources {
        Resources {
            requests: Quantities {
                cpu: rc.into(),
                memory: rm.into(),
            },
            limits: Quantities {
                cpu: lc.into(),
                memory: lm.into(),
            },
        }
    }
}

impl Default for Service {
    fn default() -> Self {
        Service {
            namespace: "mw-experimental".into(),
            node_port: 4456,
            resources: Resources::of("1000m", "3500Mi", "2000m", "4000Mi"),
            webserver_resources: Resources::of("200m", "600Mi", "1", "800Mi"),
            webserver_image: None,
            routing_prefix: "k8s-mw-experimental".into(),
        }
    }
}

/// The default of `image.max_layer_bytes`: 64 GiB, far above a MediaWiki layer (a few GiB).
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 64 << 30;

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            node_name: None,
            code: Code::default(),
            deployers: Deployers::default(),
            kubernetes: Kubernetes::default(),
            image: Image::default(),
            service: Service::default(),
            state_dir: "/var/lib/mw-experimental".into(),
            metrics_file: "/var/lib/prometheus/node.d/mw_experimental.prom".into(),
        }
    }
}

impl Default for Code {
    fn default() -> Self {
        Code {
            path: "/srv/mediawiki".into(),
            owner: "mwdeploy".into(),
            mode: "2775".into(),
        }
    }
}

impl Default for Deployers {
    fn default() -> Self {
        Deployers {
            group: "deployment".into(),
            gid: 705,
            members: Vec::new(),
        }
    }
}

impl Default for Kubernetes {
    fn default() -> Self {
        let taint = |effect: &str| Taint {
            key: "dedicated".into(),
            value: "mw-experimental".into(),
            effect: effect.into(),
        };
        Kubernetes {
            kubectl: "kubectl".into(),
            kubeconfig: None,
            timeout_seconds: 10,
            labels: BTreeMap::from([("dedicated".into(), "mw-experimental".into())]),
            taints: vec![taint("NoSchedule"), taint("NoExecute")],
        }
    }
}

impl Default for Image {
    fn default() -> Self {
        Image {
            source: ImageSource::Containerd,
            containerd_address: "/run/containerd/containerd.sock".into(),
            namespace: "k8s.io".into(),
            repository: "docker-registry.discovery.wmnet/restricted/mediawiki-multiversion".into(),
            path: "/srv/mediawiki".into(),
            location: None,
            release_file: None,
            release_key: "main_app.image".into(),
            pull: true,
            pull_timeout_seconds: 600,
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
            max_layer_entries: 10_000_000,
            layer_cache_bytes: 2 << 30,
            read: ImageRead::Auto,
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`. A missing file is fine only when `required` is
    /// false (the default path): every key has a default.
    pub fn load(path: &Path, required: bool) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the configuration {}", path.display()));
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        // An empty file (or one with only comments) means "all defaults".
        let config: Config = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            Config::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let detail = e.to_string().replace("<input>", &path.display().to_string());
                anyhow::anyhow!(
                    "invalid configuration {}: {}\nnothing was changed; fix the file (Puppet writes it \
                     from Hiera: profile::mw_experimental::*) and run again",
                    path.display(),
                    detail.strip_prefix("error: ").unwrap_or(&detail).trim_end()
                )
            })?
        };
        let problems = config.problems();
        if !problems.is_empty() {
            let mut msg = format!("invalid configuration {}:", path.display());
            for p in &problems {
                let _ = write!(msg, "\n  {p}");
            }
            msg.push_str("\nnothing was changed; fix the file and run again");
            bail!(msg);
        }
        Ok(config)
    }

    /// The root directory's mode as a number (validated at load).
    pub fn code_mode(&self) -> u32 {
        u32::from_str_radix(&self.code.mode, 8).unwrap_or(0o2775)
    }

    /// The Node object's name: configured, or the kubelet's default (hostname, lower-cased).
    pub fn node_name(&self) -> Result<String> {
        if let Some(name) = &self.node_name {
            return Ok(name.clone());
        }
        let host = rustix::system::uname();
        let name = host.nodename().to_string_lossy().to_lowercase();
        if name.is_empty() {
            bail!("finding this host's name for the Node object: uname returned none; set node_name in the configuration");
        }
        Ok(name)
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// Every problem, each naming its key, so one run tells the whole story.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut path = |key: &str, value: &Path| {
            if let Err(why) = check_path(value) {
                p.push(format!("{key}: {:?} {why}", value.display().to_string()));
            }
        };
        path("code.path", &self.code.path);
        path("image.path", &self.image.path);
        path("image.containerd_address", &self.image.containerd_address);
        path("state_dir", &self.state_dir);
        path("metrics_file", &self.metrics_file);
        if let Some(k) = &self.kubernetes.kubeconfig {
            path("kubernetes.kubeconfig", k);
        }
        if let Some(l) = &self.image.location {
            path("image.location", l);
        }
        if let Some(r) = &self.image.release_file {
            path("image.release_file", r);
        }
        if self.code.path == Path::new("/") {
            p.push("code.path: \"/\" cannot be the code tree".into());
        }
        if self.state_dir.starts_with(&self.code.path) {
            p.push(format!(
                "state_dir: {:?} lies inside code.path, which engineers can write; choose a directory outside it",
                self.state_dir.display().to_string()
            ));
        }
        match u32::from_str_radix(&self.code.mode, 8) {
            Ok(m) if !self.code.mode.is_empty() && self.code.mode.len() <= 4 && m <= 0o7777 => {}
            _ => p.push(format!(
                "code.mode: {:?} is not an octal mode; write it as a quoted string of up to four octal digits, e.g. \"2775\"",
                self.code.mode
            )),
        }
        if let Err(why) = check_account_name(&self.code.owner) {
            p.push(format!("code.owner: {:?} {why}", self.code.owner));
        }
        if let Err(why) = check_account_name(&self.deployers.group) {
            p.push(format!("deployers.group: {:?} {why}", self.deployers.group));
        }
        if !(1..=65533).contains(&self.deployers.gid) {
            p.push(format!(
                "deployers.gid: {} is outside 1..=65533",
                self.deployers.gid
            ));
        }
        for (i, m) in self.deployers.members.iter().enumerate() {
            if let Err(why) = check_account_name(m) {
                p.push(format!("deployers.members[{i}]: {m:?} {why}"));
            }
        }
        if let Some(n) = &self.node_name {
            if let Err(why) = check_dns_subdomain(n) {
                p.push(format!("node_name: {n:?} {why}"));
            }
        }
        if self.kubernetes.kubectl.is_empty()
            || (self.kubernetes.kubectl.contains('/')
                && check_path(Path::new(&self.kubernetes.kubectl)).is_err())
        {
            p.push(format!(
                "kubernetes.kubectl: {:?} must be a command name found in PATH or an absolute path",
                self.kubernetes.kubectl
            ));
        }
        if !(1..=300).contains(&self.kubernetes.timeout_seconds) {
            p.push(format!(
                "kubernetes.timeout_seconds: {} is outside 1..=300",
                self.kubernetes.timeout_seconds
            ));
        }
        for (k, v) in &self.kubernetes.labels {
            if let Err(why) = check_label_key(k) {
                p.push(format!("kubernetes.labels: key {k:?} {why}"));
            }
            if let Err(why) = check_label_value(v) {
                p.push(format!("kubernetes.labels.{k}: value {v:?} {why}"));
            }
        }
        for (i, t) in self.kubernetes.taints.iter().enumerate() {
            if let Err(why) = check_label_key(&t.key) {
                p.push(format!("kubernetes.taints[{i}].key: {:?} {why}", t.key));
            }
            if let Err(why) = check_label_value(&t.value) {
                p.push(format!("kubernetes.taints[{i}].value: {:?} {why}", t.value));
            }
            if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
                p.push(format!(
                    "kubernetes.taints[{i}].effect: {:?} is not one of NoSchedule, PreferNoSchedule, NoExecute",
                    t.effect
                ));
            }
            if self.kubernetes.taints[..i]
                .iter()
                .any(|o| o.key == t.key && o.effect == t.effect)
            {
                p.push(format!(
                    "kubernetes.taints[{i}]: a second taint with key {:?} and effect {}; Kubernetes keeps one per key and effect",
                    t.key, t.effect
                ));
            }
        }
        if self.image.namespace.is_empty()
            || !self
                .image
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            p.push(format!(
                "image.namespace: {:?} is not a containerd namespace name",
                self.image.namespace
            ));
        }
        if self.image.repository.is_empty()
            || self.image.repository.contains(char::is_whitespace)
            || self.image.repository.contains(':')
                && !self
                    .image
                    .repository
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .contains(':')
        {
            p.push(format!(
                "image.repository: {:?} is not an image repository (name without tag)",
                self.image.repository
            ));
        }
        if self.image.max_layer_bytes < 1 << 20 {
            p.push(format!(
                "image.max_layer_bytes: {} is below 1048576 (1 MiB); give the most bytes one layer may unpack to",
                self.image.max_layer_bytes
            ));
        }
        if self.image.max_layer_entries < 1000 {
            p.push(format!(
                "image.max_layer_entries: {} is below 1000; give the most entries one layer may hold",
                self.image.max_layer_entries
            ));
        }
        self.image_and_service_problems(&mut p);
        if self.image.source != ImageSource::Containerd && self.image.location.is_none() {
            let source = if self.image.source == ImageSource::OciLayout {
                "oci-layout"
            } else {
                "directory"
            };
            p.push(format!(
                "image.location: required when image.source is {source}"
            ));
        }
        p
    }
}

impl Config {
    /// The release file's and the service's keys.
    fn image_and_service_problems(&self, p: &mut Vec<String>) {
        let key = &self.image.release_key;
        if key.is_empty()
            || key.split('.').any(|k| {
                k.is_empty()
                    || !k
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
        {
            p.push(format!(
                "image.release_key: {key:?} is not a dotted key of the release file, e.g. \"main_app.image\""
            ));
        }
        if !(1..=3600).contains(&self.image.pull_timeout_seconds) {
            p.push(format!(
                "image.pull_timeout_seconds: {} is outside 1..=3600",
                self.image.pull_timeout_seconds
            ));
        }
        let s = &self.service;
        if s.namespace.len() > 63
            || check_dns_subdomain(&s.namespace).is_err()
            || s.namespace.contains('.')
        {
            p.push(format!(
                "service.namespace: {:?} is not a Kubernetes namespace name (at most 63 lower-case letters, digits and '-')",
                s.namespace
            ));
        }
        if s.node_port == 0 {
            p.push("service.node_port: 0 is not a port; WMF's mw-experimental uses 4456".into());
        }
        for (name, r) in [
            ("service.resources", &s.resources),
            ("service.webserver_resources", &s.webserver_resources),
        ] {
            for (which, q) in [("requests", &r.requests), ("limits", &r.limits)] {
                if !is_quantity(&q.cpu) {
                    p.push(format!(
                        "{name}.{which}.cpu: {:?} is not a Kubernetes quantity, e.g. \"1000m\" or \"2\"",
                        q.cpu
                    ));
                }
                if !is_quantity(&q.memory) {
                    p.push(format!(
                        "{name}.{which}.memory: {:?} is not a Kubernetes quantity, e.g. \"3500Mi\"",
                        q.memory
                    ));
                }
            }
        }
        if let Some(img) = &s.webserver_image {
            if let Err(why) = check_image_reference(img) {
                p.push(format!("service.webserver_image: {img:?} {why}"));
            }
        }
        if s.routing_prefix.is_empty()
            || !s
                .routing_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            p.push(format!(
                "service.routing_prefix: {:?} may hold only letters, digits, '-' and '.' (what X-Wikimedia-Debug's backend= takes)",
                s.routing_prefix
            ));
        }
    }
}

/// A Kubernetes resource quantity as written in manifests: a decimal number with an optional
/// suffix (`m`, `k`, `M`, `G`, `T`, `Ki`, `Mi`, `Gi`, `Ti`).
fn is_quantity(q: &str) -> bool {
    let num_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

/// `registry/name:tag` with a tag other than `latest`: what a pod may run.
pub fn check_image_reference(r: &str) -> std::result::Result<(), &'static str> {
    let last = r.rsplit('/').next().unwrap_or(r);
    let Some((name, tag)) = last.split_once(':') else {
        return Err("has no tag; name the exact image (registry/name:tag)");
    };
    if name.is_empty()
        || tag.is_empty()
        || r.contains(char::is_whitespace)
        || r.contains('@')
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err("is not an image reference (registry/name:tag)");
    }
    if tag == "latest" {
        return Err("is tagged latest, which says nothing of what runs; name the exact tag");
    }
    Ok(())
}

/// Absolute and normalised: no `.`, `..`, empty or trailing components, valid UTF-8.
fn check_path(path: &Path) -> std::result::Result<(), &'static str> {
    let Some(s) = path.to_str() else {
        return Err("is not valid UTF-8");
    };
    if !path.is_absolute() {
        return Err("is not an absolute path");
    }
    if s != "/" && (s.ends_with('/') || s.contains("//")) {
        return Err("is not normalised (doubled or trailing '/')");
    }
    if path
        .components()
        .any(|c| matches!(c, PathComponent::CurDir | PathComponent::ParentDir))
        || s.contains("/./")
        || s.ends_with("/.")
    {
        return Err("is not normalised ('.' or '..' in it)");
    }
    Ok(())
}

/// Debian's default NAME_REGEX for users and groups (adduser.conf), at most 32 characters.
fn check_account_name(name: &str) -> std::result::Result<(), &'static str> {
    let mut chars = name.chars();
    let ok_first = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_');
    let body = name.strip_suffix('$').unwrap_or(name);
    let ok_rest = body
        .chars()
        .skip(1)
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok_first || !ok_rest || name.len() > 32 {
        return Err("is not a valid user or group name (lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32 characters)");
    }
    Ok(())
}

/// RFC 1123 DNS subdomain, as Kubernetes requires for object names and label prefixes.
fn check_dns_subdomain(s: &str) -> std::result::Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err("is not a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253 characters)")
    }
}

/// A label name part or value: at most 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label (or taint) key: `[prefix/]name`, as Kubernetes validates it.
pub fn check_label_key(key: &str) -> std::result::Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if check_dns_subdomain(p).is_err() {
            return Err("has a prefix that is not a DNS subdomain");
        }
    }
    if !is_label_name(name) {
        return Err("is not a valid Kubernetes label key (at most 63 of letters, digits, '-', '_', '.', alphanumeric at both ends, with an optional DNS prefix and '/')");
    }
    Ok(())
}

/// A label (or taint) value: empty, or a label name.
pub fn check_label_value(value: &str) -> std::result::Result<(), &'static str> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err("is not a valid Kubernetes label value (at most 63 of letters, digits, '-', '_', '.', alphanumeric at both ends)")
    }
}
