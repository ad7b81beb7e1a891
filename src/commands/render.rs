//! `render`: prints the Kubernetes objects that [`crate::render`] derives from the configuration,
//! for the image the node's code follows (the release file's, else the one last synced), or
//! with `--helmfile-values` the values overlay for WMF's chart release. It only prints: it must
//! never apply anything to a cluster, pull an image or write the state.

use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::image::release;
use crate::plan::Component;
use crate::render::Images;
use crate::state::State;
use anyhow::{bail, Result};

/// Prints the YAML documents.
pub fn render(cfg: &Config, helmfile_values: bool) -> Result<ExitCode> {
    if helmfile_values {
        print!("{}", crate::render::helmfile_values(cfg)?);
    } else {
        crate::render::check_labels(cfg)?;
        print!("{}", crate::render::render(cfg, &images(cfg)?)?);
    }
    Ok(ExitCode::Ok)
}

/// The images the pods run: the release file's (MediaWiki and web server), else the MediaWiki
/// image last synced and `service.webserver_image`. The MediaWiki image is pinned to the digest
/// the last sync recorded when that sync was of the same reference (the node holds exactly that
/// image); nothing is asked of containerd or a registry.
fn images(cfg: &Config) -> Result<Images> {
    let rel = release::configured(cfg)?;
    let state = State::read(&cfg.state_file())?;
    let synced = state
        .as_ref()
        .and_then(|s| s.components.get(&Component::Code))
        .map(|c| &c.plan.observed);
    let synced_image = synced.and_then(|o| o["image"].as_str().map(str::to_string));
    let app = match &rel {
        Some(r) => r.reference.clone(),
        None => match &synced_image {
            Some(i) => i.clone(),
            None => bail!(
                "rendering the workload: no image to run: the tree was never synced ({}) and \
                 image.release_file is not set; run `mw-experimental sync` first, or set \
                 image.release_file",
                cfg.state_file().display()
            ),
        },
    };
    let app_digest = match (synced_image, synced.and_then(|o| o["digest"].as_str())) {
        (Some(i), Some(d)) if i == app => Some(d.to_string()),
        _ => None,
    };
    let webserver = match (&cfg.service.webserver_image, rel.and_then(|r| r.webserver)) {
        (Some(w), _) => w.clone(),
        (None, Some(w)) => w,
        (None, None) => bail!(
            "rendering the workload: no web server image: set service.webserver_image \
             (registry/name:tag), or image.release_file to a release file with mw.httpd.image_tag"
        ),
    };
    Ok(Images {
        app,
        webserver,
        app_digest,
        webserver_digest: None,
    })
}
