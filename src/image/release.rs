//! WMF's release values file: the image production runs.
//!
//! scap writes one values file per helmfile release (`<namespace>-<release>-<cluster>.yaml`, e.g.
//! `mw-experimental-pinkllama-eqiad.yaml`) into `/etc/helmfile-defaults/mediawiki/release/` on
//! the deployment servers, with `docker.registry`, `main_app.image` (e.g.
//! `restricted/mediawiki-multiversion:2024-08-08-135932-publish`, the registry stripped) and
//! `mw.httpd.image_tag` (the web server image). WMF syncs that directory to the mw-experimental
//! nodes, so a node that follows one of its files runs exactly what every deployment runs.
//! This module only reads that file (at most 1 MiB) and names the image; it must never write
//! anything, contact a registry, or accept a value that is not an image reference.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a release file names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub file: PathBuf,
    /// The full reference as containerd and kubelet name it: `registry/name:tag`.
    pub reference: String,
    /// The tag alone.
    pub tag: String,
    /// The web server image (`mw.httpd.image_tag`), with its registry, when the file has one.
    pub webserver: Option<String>,
}

/// The configured release file's image; `None` when `image.release_file` is not set.
pub fn configured(cfg: &Config) -> Result<Option<Release>> {
    match &cfg.image.release_file {
        None => Ok(None),
        Some(f) => read(f, &cfg.image.release_key).map(Some),
    }
}

/// Reads `file` and the image its `key` names.
pub fn read(file: &Path, key: &str) -> Result<Release> {
    let what = || {
        format!(
            "reading the release values file {} (image.release_file)",
            file.display()
        )
    };
    let f = std::fs::File::open(file).with_context(what)?;
    let mut text = String::new();
    f.take(1 << 20)
        .read_to_string(&mut text)
        .with_context(what)?;
    let values: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: not YAML", what()))?
    };
    let registry = lookup(&values, "docker.registry").and_then(Value::as_str);
    let Some(image) = lookup(&values, key) else {
        bail!(
            "{}: it has no {key} (image.release_key); check that the file is the release's and \
             the key is the one that names the MediaWiki image",
            what()
        );
    };
    let Some(image) = image.as_str() else {
        bail!("{}: {key} is not a string: {image}", what());
    };
    let reference =
        qualify(registry, image).with_context(|| format!("{}: {key} is {image:?}", what()))?;
    let tag = reference
        .rsplit('/')
        .next()
        .and_then(|last| last.split_once(':'))
        .map(|(_, t)| t.to_string())
        .unwrap_or_default();
    let webserver = lookup(&values, "mw.httpd.image_tag")
        .and_then(Value::as_str)
        .and_then(|w| qualify(registry, w).ok());
    Ok(Release {
        file: file.to_path_buf(),
        reference,
        tag,
        webserver,
    })
}

/// `registry` + `/` + `image`, unless `image` already names its registry (a first component
/// with a `.` or `:`, or `localhost`, as Docker's reference grammar has it).
fn qualify(registry: Option<&str>, image: &str) -> Result<String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "./:_-".contains(c))
    };
    if !valid(image) {
        bail!("not an image reference (registry/name:tag)");
    }
    let first = image.split('/').next().unwrap_or("");
    let has_registry =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = match (has_registry, registry) {
        (true, _) => image.to_string(),
        (false, Some(r)) if valid(r) && !r.contains('/') || r_with_path(r) => {
            format!("{}/{image}", r.trim_end_matches('/'))
        }
        (false, Some(r)) => bail!("docker.registry {r:?} is not a registry host"),
        (false, None) => bail!("there is no docker.registry to pull it from"),
    };
    let last = full.rsplit('/').next().unwrap_or("");
    match last.split_once(':') {
        Some((name, tag)) if !name.is_empty() && !tag.is_empty() && !tag.contains(':') => Ok(full),
        _ => bail!("it names no tag; the release must name one exact image (name:tag)"),
    }
}

/// A registry given with a path prefix (`host/prefix`), which Docker allows too.
fn r_with_path(r: &str) -> bool {
    let mut parts = r.split('/');
    let host = parts.next().unwrap_or("");
    !host.is_empty()
        && (host.contains('.') || host.contains(':') || host == "localhost")
        && parts.all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
}

/// `a.b.c` in nested mappings.
fn lookup<'v>(v: &'v Value, dotted: &str) -> Option<&'v Value> {
    dotted.split('.').try_fold(v, |v, k| v.get(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mw-experimental-pinkllama-eqiad.yaml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn scaps_values_file_names_the_image_and_its_registry() {
        // The shape scap's _HelmfileReleaseValues.to_values() writes (yaml.dump, sorted keys).
        let (_d, p) = write(
            "docker:\n  registry: docker-registry.discovery.wmnet\nmain_app:\n  image: restricted/mediawiki-multiversion:2024-08-08-135932-publish\nmw:\n  httpd:\n    image_tag: restricted/mediawiki-webserver:2024-08-08-135932-webserver\nphp:\n  version: '8.1'\n",
        );
        let r = read(&p, "main_app.image").unwrap();
        assert_eq!(
            r.reference,
            "docker-registry.discovery.wmnet/restricted/mediawiki-multiversion:2024-08-08-135932-publish"
        );
        assert_eq!(r.tag, "2024-08-08-135932-publish");
        assert_eq!(
            r.webserver.as_deref(),
            Some("docker-registry.discovery.wmnet/restricted/mediawiki-webserver:2024-08-08-135932-webserver")
        );
    }

    #[test]
    fn a_registry_with_a_port_and_a_qualified_image() {
        let (_d, p) = write("docker: {registry: '127.0.0.1:5000'}\nmain_app: {image: 'restricted/mw:2024-08-08-135932-publish-81'}\n");
        assert_eq!(
            read(&p, "main_app.image").unwrap().reference,
            "127.0.0.1:5000/restricted/mw:2024-08-08-135932-publish-81"
        );
        let (_d, p) = write("main_app: {image: 'other.example:443/x/mw:t1'}\n");
        assert_eq!(
            read(&p, "main_app.image").unwrap().reference,
            "other.example:443/x/mw:t1"
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let (_d, p) = write("docker: {registry: r.example}\nmain_app: {}\n");
        let e = format!("{:#}", read(&p, "main_app.image").unwrap_err());
        assert!(e.contains("has no main_app.image"), "{e}");
        let (_d, p) = write("docker: {registry: r.example}\nmain_app: {image: 'restricted/mw'}\n");
        let e = format!("{:#}", read(&p, "main_app.image").unwrap_err());
        assert!(e.contains("names no tag"), "{e}");
        let (_d, p) = write("main_app: {image: 'restricted/mw:t'}\n");
        let e = format!("{:#}", read(&p, "main_app.image").unwrap_err());
        assert!(e.contains("no docker.registry"), "{e}");
        let (_d, p) = write("main_app: {image: 'a b'}\n: [\n");
        assert!(read(&p, "main_app.image").is_err());
        let e = format!(
            "{:#}",
            read(Path::new("/nonexistent/release.yaml"), "main_app.image").unwrap_err()
        );
        assert!(e.contains("/nonexistent/release.yaml"), "{e}");
    }
}
