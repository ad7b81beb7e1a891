//! `watch`: the trigger for a node that follows the newest image. It follows containerd's image
//! events and touches a file when an image of `image.repository` is created or updated (a pull
//! by the kubelet, `crictl`, or a sync); `mw-experimental-sync.path` watches that file and
//! starts the sync. It never syncs itself, so the sync keeps its own unit, lock, sandbox and
//! journal; idle, it blocks on the event stream (no polling). When the stream breaks
//! (containerd restarted) it opens it again and touches the file once, since an event may have
//! been missed meanwhile.

use crate::config::{Config, ImageSource};
use crate::exit_codes::ExitCode;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How long to wait before opening the event stream again after containerd went away.
const RETRY: Duration = Duration::from_secs(2);

pub fn watch(cfg: &Config, trigger: &Path, max_triggers: Option<u64>) -> Result<ExitCode> {
    if cfg.image.source != ImageSource::Containerd {
        bail!(
            "watch follows containerd's image events, but image.source is {:?}; run it only \
             with image.source containerd (a release file is followed by \
             mw-experimental-sync.path on its own)",
            cfg.image.source
        );
    }
    let dir = trigger
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .with_context(|| format!("the trigger {} has no directory", trigger.display()))?;
    if !dir.is_dir() {
        bail!(
            "the trigger's directory {} does not exist; create it (the unit's \
             RuntimeDirectory does)",
            dir.display()
        );
    }
    let repo = &cfg.image.repository;
    log::info!(
        "following image events of {repo} in containerd at {} (namespace {}); a new image \
         touches {}",
        cfg.image.containerd_address.display(),
        cfg.image.namespace,
        trigger.display()
    );
    let mut fired = 0u64;
    let mut failed: Option<anyhow::Error> = None;
    crate::image::watch_events(
        &cfg.image.containerd_address,
        &cfg.image.namespace,
        repo,
        RETRY,
        &mut |ev| {
            let why = match ev {
                crate::image::ImageEvent::Connected { again: false } => {
                    log::debug!("the event stream is open");
                    return true;
                }
                crate::image::ImageEvent::Connected { again: true } => {
                    "the event stream was opened again (an event may have been missed)".to_string()
                }
                crate::image::ImageEvent::Image { topic, name } => format!("{topic} {name}"),
            };
            if let Err(e) = touch(trigger, &why) {
                failed = Some(e);
                return false;
            }
            log::info!("{why}: a sync is due");
            fired += 1;
            max_triggers.is_none_or(|m| fired < m)
        },
    )?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(ExitCode::Ok)
}

/// Writes `why` to the trigger file (a close after a write is what the path unit sees). Never
/// follows a symlink there.
fn touch(trigger: &Path, why: &str) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        trigger,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .with_context(|| format!("opening the trigger {} to write", trigger.display()))?;
    let mut f = std::fs::File::from(fd);
    writeln!(f, "{why}").with_context(|| format!("writing the trigger {}", trigger.display()))?;
    Ok(())
}
