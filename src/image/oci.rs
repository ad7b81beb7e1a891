//! The OCI image format, wherever its blobs are kept: the blob [`Store`] (a directory in OCI
//! image layout, or containerd's content store through its API), the index, manifest and config
//! JSON, the candidates a store has of the repository, and opening one as a layered [`Image`].
//! It only reads: it must never write to a store, never take a file name from a blob except a
//! checked `algorithm:hex` digest, never read more than 16 MiB of a JSON blob, and never use a
//! blob's bytes before they were checked against its digest (JSON: before parsing; layers: see
//! `layers`).

use super::verify::{read_small, Verified};
use super::{containerd, parse_publish_tag, Backend, Candidate, Image};
use crate::config::{Config, ImageSource};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;

/// Where blobs come from.
#[derive(Clone)]
pub(super) enum Store {
    OciLayout(PathBuf),
    Containerd(containerd::Client),
}

pub(super) fn store(cfg: &Config) -> Result<Store> {
    Ok(match cfg.image.source {
        ImageSource::OciLayout => Store::OciLayout(cfg.image.location.clone().unwrap_or_default()),
        _ => Store::Containerd(containerd::Client::new(
            &cfg.image.containerd_address,
            &cfg.image.namespace,
        )?),
    })
}

impl Store {
    pub(super) fn describe(&self) -> String {
        match self {
            Store::OciLayout(p) => format!("the OCI layout {}", p.display()),
            Store::Containerd(c) => c.describe(),
        }
    }

    /// A blob's bytes, streamed; reading past its end fails if they do not match `digest`.
    pub(super) fn open(&self, digest: &str) -> Result<Box<dyn Read + Send>> {
        Ok(self.open_verified(digest)?.0)
    }

    /// [`Store::open`], with a flag that is set once the whole blob was read and matched.
    pub(super) fn open_verified(
        &self,
        digest: &str,
    ) -> Result<(
        Box<dyn Read + Send>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    )> {
        let raw = self.open_raw(digest)?;
        let (v, ok) = Verified::new(raw, digest)?;
        Ok((Box::new(v), ok))
    }

    fn open_raw(&self, digest: &str) -> Result<Box<dyn Read + Send>> {
        let (alg, hex) = check_digest(digest)?;
        match self {
            Store::OciLayout(dir) => {
                let p = dir.join("blobs").join(alg).join(hex);
                let f = std::fs::File::open(&p)
                    .with_context(|| format!("opening the blob {}", p.display()))?;
                Ok(Box::new(f))
            }
            Store::Containerd(c) => Ok(c.read(digest)?),
        }
    }

    fn json(&self, digest: &str) -> Result<Value> {
        let buf = read_small(self.open_raw(digest)?, digest, 16 << 20)
            .with_context(|| format!("reading the blob {digest} from {}", self.describe()))?;
        serde_json::from_slice(&buf)
            .with_context(|| format!("parsing the blob {digest} from {} as JSON", self.describe()))
    }
}

fn check_digest(d: &str) -> Result<(&str, &str)> {
    let Some((alg, hex)) = d.split_once(':') else {
        bail!("{d:?} is not a digest (algorithm:hex)");
    };
    if alg.is_empty()
        || !alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        || hex.len() < 32
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        bail!("{d:?} is not a digest (algorithm:hex)");
    }
    Ok((alg, hex))
}

/// Images of the repository in the store.
pub(super) fn list(store: &Store, cfg: &Config) -> Result<Vec<Candidate>> {
    let repo = &cfg.image.repository;
    let mut out = Vec::new();
    match store {
        Store::OciLayout(dir) => {
            let p = dir.join("index.json");
            let text = std::fs::read(&p)
                .with_context(|| format!("reading the OCI layout index {}", p.display()))?;
            let index: Value = serde_json::from_slice(&text)
                .with_context(|| format!("parsing {}", p.display()))?;
            for d in index["manifests"].as_array().into_iter().flatten() {
                let Some(name) = d["annotations"]["org.opencontainers.image.ref.name"].as_str()
                else {
                    continue;
                };
                // A bare tag names an image of the layout (umoci and skopeo write those);
                // a full reference must be of the repository.
                let tag = match name.rsplit_once(':') {
                    Some((r, t)) if r == repo => t,
                    Some((r, _)) if r.contains('/') || !r.is_empty() => continue,
                    _ => name,
                };
                if tag.contains('/') {
                    continue;
                }
                let Some(digest) = d["digest"].as_str() else {
                    continue;
                };
                out.push(Candidate {
                    reference: format!("{repo}:{tag}"),
                    tag: tag.to_string(),
                    digest: digest.to_string(),
                    created: None,
                });
            }
        }
        Store::Containerd(c) => out.extend(c.list(repo)?),
    }
    // Creation time only matters for tags that do not say when they were published.
    for c in &mut out {
        if parse_publish_tag(&c.tag).is_none() {
            c.created = manifest_for(store, &c.digest)
                .and_then(|m| {
                    let cfgd = m["config"]["digest"]
                        .as_str()
                        .context("no config")?
                        .to_string();
                    store.json(&cfgd)
                })
                .ok()
                .and_then(|conf| {
                    conf["created"]
                        .as_str()
                        .and_then(|s| humantime::parse_rfc3339_weak(s.get(..19)?).ok())
                })
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
        }
    }
    Ok(out)
}

/// The image manifest for `digest`, descending an index to this machine's platform.
fn manifest_for(store: &Store, digest: &str) -> Result<Value> {
    let mut v = store.json(digest)?;
    for _ in 0..4 {
        if v["manifests"].is_array() {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            };
            let ms = v["manifests"].as_array().cloned().unwrap_or_default();
            let pick = ms
                .iter()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
                .or_else(|| (ms.len() == 1).then(|| &ms[0]))
                .with_context(|| format!("the index {digest} has no manifest for linux/{arch}"))?;
            let d = pick["digest"]
                .as_str()
                .context("a manifest without a digest")?;
            v = store.json(d)?;
        } else {
            return Ok(v);
        }
    }
    bail!("the index {digest} nests too deep")
}

/// The image config must be there, match its digest, and list one diff ID per layer (an
/// uncompressed layer's diff ID is its own digest); anything else is a damaged or tampered
/// image, refused before a layer is read.
fn check_config(store: &Store, m: &Value, layers: &[(String, String)]) -> Result<Vec<String>> {
    let cd = m["config"]["digest"]
        .as_str()
        .context("the manifest names no config blob")?;
    let conf = store.json(cd)?;
    let ids = conf["rootfs"]["diff_ids"]
        .as_array()
        .context("the config has no rootfs.diff_ids")?;
    if ids.len() != layers.len() {
        bail!(
            "the config lists {} layer diff IDs, the manifest {} layers; pull the image again",
            ids.len(),
            layers.len()
        );
    }
    let mut out = Vec::with_capacity(ids.len());
    for (id, (d, mt)) in ids.iter().zip(layers) {
        let id = id.as_str().context("a diff ID that is not a string")?;
        if mt.ends_with(".tar") && id != d {
            bail!("the uncompressed layer {d} has the diff ID {id} in the config; they must be equal; pull the image again");
        }
        check_digest(id)?;
        out.push(id.to_string());
    }
    Ok(out)
}

/// A layered image: its manifest's layers; the tree is read from them on demand.
pub(super) fn open_layered(
    cfg: &Config,
    store: Store,
    reference: String,
    digest: &str,
) -> Result<Image> {
    let m = manifest_for(&store, digest)
        .with_context(|| format!("reading the manifest of {reference}"))?;
    let mut layers = Vec::new();
    for l in m["layers"].as_array().into_iter().flatten() {
        let d = l["digest"].as_str().context("a layer without a digest")?;
        let mt = l["mediaType"].as_str().unwrap_or("").to_string();
        layers.push((d.to_string(), mt));
    }
    // Every layer goes under the lease before the first is read, so untagging the image
    // while the sync runs cannot let the garbage collector take a layer not read yet.
    if let Store::Containerd(c) = &store {
        for (d, _) in &layers {
            c.protect(d)?;
        }
    }
    let diff_ids = check_config(&store, &m, &layers)
        .with_context(|| format!("reading the config of {reference} ({digest})"))?;
    let plan = Box::new(super::snapshots::Plan {
        read: cfg.image.read,
        diff_ids,
    });
    let prefix = cfg
        .image
        .path
        .to_string_lossy()
        .trim_matches('/')
        .to_string();
    Ok(Image {
        reference,
        digest: digest.to_string(),
        backend: Backend::Layers {
            store,
            layers,
            prefix,
            max_layer_bytes: cfg.image.max_layer_bytes,
            max_layer_entries: cfg.image.max_layer_entries,
            cache: super::layer_cache::LayerCache::new(&cfg.state_dir, cfg.image.layer_cache_bytes),
            plan,
            view: None,
        },
        tree_cache: None,
        hash_on_read: true,
    })
}
