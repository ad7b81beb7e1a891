//! Crash recovery: before a sync or reset touches the tree, removes the temp files
//! (`.mwx-tmp.*`) a killed run left, which the engine lists in `state_dir/sync/journal` before
//! creating them, so no walk of the tree is needed. It must never remove anything but a file or
//! symlink named `.mwx-tmp.*` at a journaled path, nor follow a symlink on the way there.

use super::live::kind_of;
use super::manifest::unesc;
use super::sync_dir;
use crate::config::Config;
use crate::fs::at::{self, DirCache, Opened};
use crate::image::Kind;
use anyhow::{Context, Result};
use rustix::fs::AtFlags;

/// Removes the temp files a killed run left (listed in the journal), without walking the tree.
pub(super) fn recover(cfg: &Config) -> Result<()> {
    let jp = sync_dir(cfg).join("journal");
    let text = match std::fs::read_to_string(&jp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", jp.display())),
    };
    let root = match at::open_dir_path(&cfg.code.path) {
        Ok(r) => r,
        Err(_) => {
            let _ = std::fs::remove_file(&jp);
            return Ok(());
        }
    };
    let mut dc = DirCache::new(root);
    let mut n = 0;
    for line in text.lines() {
        let Some(rel) = line.strip_prefix("tmp\t") else {
            continue;
        };
        let rel = unesc(rel);
        let (parent, name) = at::split(&rel);
        if !name.starts_with(".mwx-tmp.") {
            continue;
        }
        if let Opened::Dir(d) = dc.open(parent)? {
            if let Some(st) = at::lstat_at(d, name)? {
                if matches!(kind_of(&st), Some(Kind::File) | Some(Kind::Symlink))
                    && rustix::fs::unlinkat(d, name, AtFlags::empty()).is_ok()
                {
                    n += 1;
                }
            }
        }
    }
    if n > 0 {
        log::info!("removed {n} temporary file(s) left by an interrupted run");
    }
    std::fs::remove_file(&jp).with_context(|| format!("removing {}", jp.display()))?;
    Ok(())
}
