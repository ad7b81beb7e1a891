//! Crash recovery: before a sync or reset touches the tree, removes the temp files
//! (`.mwx-tmp.*`) a killed run left, which the engine lists in `state_dir/sync/journal` before
//! creating them, so no walk of the tree is needed; and records in the manifest what the killed
//! run had already done (the engine journals each path it is about to put in place or remove,
//! with the entry): a journaled path whose live entry is now that entry (or is gone, for a
//! removal) takes it in the manifest. Without this, a later image that equals the old manifest
//! at such a path would leave the half-done change in place, and `diff` would call it an edit.
//! It must never remove anything but a file or symlink named `.mwx-tmp.*` at a journaled path,
//! never record an entry the live tree does not have (an engineer's change after the kill stays
//! an edit), nor follow a symlink on the way there.

use super::live::{equals_manifest, kind_of, quick};
use super::manifest::{is_tree_path, parse_line, Manifest};
use super::sync_dir;
use crate::config::Config;
use crate::fs::at::{self, DirCache, Opened};
use crate::image::Kind;
use crate::tsv::unesc;
use anyhow::{Context, Result};
use rustix::fs::AtFlags;

/// Removes the temp files a killed run left (listed in the journal), without walking the tree,
/// and records its finished steps in the manifest. Returns whether a killed run was found.
pub(super) fn recover(cfg: &Config) -> Result<bool> {
    let jp = sync_dir(cfg).join("journal");
    let text = match std::fs::read_to_string(&jp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", jp.display())),
    };
    let root = match at::open_dir_path(&cfg.code.path) {
        Ok(r) => r,
        Err(_) => {
            let _ = std::fs::remove_file(&jp);
            return Ok(true);
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
        if !is_tree_path(&rel) || !name.starts_with(".mwx-tmp.") {
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
    let mut man: Option<Manifest> = None;
    let mut recorded = 0u64;
    for line in text.lines() {
        let (rel, want) = if let Some(rest) = line.strip_prefix("set\t") {
            match parse_line(rest) {
                Some((p, m)) => (p, Some(m)),
                // A line cut short by the kill: its step never ran.
                None => continue,
            }
        } else if let Some(rest) = line.strip_prefix("del\t") {
            (unesc(rest), None)
        } else {
            continue;
        };
        if !is_tree_path(&rel) {
            continue;
        }
        let man = match &mut man {
            Some(m) => m,
            None => man.insert(Manifest::read(cfg)?),
        };
        let (parent, name) = at::split(&rel);
        let live = match dc.open(parent)? {
            Opened::Dir(d) => at::lstat_at(d, name)?.map(|st| (d, st)),
            Opened::Missing(_) => None,
            Opened::Blocked(_) => continue,
        };
        match (want, live) {
            (None, None) => {
                man.entries
                    .retain(|k, _| k != &rel && !super::under(k, &rel));
                recorded += 1;
            }
            (Some(mut m), Some((d, st))) if equals_manifest(&m, &st, d, name, &mut None)? => {
                m.live = quick(&st);
                man.entries.insert(rel, m);
                recorded += 1;
            }
            _ => {}
        }
    }
    if let Some(man) = &man {
        man.write(cfg)?;
        log::info!("recorded {recorded} finished step(s) of an interrupted run in the manifest");
    }
    std::fs::remove_file(&jp).with_context(|| format!("removing {}", jp.display()))?;
    Ok(true)
}
