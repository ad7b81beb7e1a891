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
use super::manifest::{is_tree_path, parse_line, MEntry, Reader, Writer};
use super::sync_dir;
use crate::config::Config;
use crate::fs::at::{self, DirCache, Opened};
use crate::image::Kind;
use crate::tsv::unesc;
use anyhow::{Context, Result};
use rustix::fs::AtFlags;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::Path;

/// Removes the temp files a killed run left (listed in the journal), without walking the tree,
/// and records its finished steps in the manifest. Returns whether a killed run was found.
pub(super) fn recover(cfg: &Config) -> Result<bool> {
    let jp = sync_dir(cfg).join("journal");
    if !jp.try_exists().unwrap_or(true) {
        return Ok(false);
    }
    remove_state_temps(&sync_dir(cfg));
    let root = match at::open_dir_path(&cfg.code.path) {
        Ok(r) => r,
        Err(_) => {
            let _ = std::fs::remove_file(&jp);
            return Ok(true);
        }
    };
    let mut dc = DirCache::new(root);
    let mut n = 0;
    each_line(&jp, &mut |line| {
        let Some(rel) = line.strip_prefix("tmp\t") else {
            return Ok(());
        };
        let rel = unesc(rel);
        let (parent, name) = at::split(&rel);
        if !is_tree_path(&rel) || !name.starts_with(".mwx-tmp.") {
            return Ok(());
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
        Ok(())
    })?;
    if n > 0 {
        log::info!("removed {n} temporary file(s) left by an interrupted run");
    }
    // The finished steps, in journal order: what was put in place, and what was removed (a
    // subtree). A later step at a path overrides an earlier one.
    let mut sets: BTreeMap<String, MEntry> = BTreeMap::new();
    let mut dels: BTreeSet<String> = BTreeSet::new();
    let mut recorded = 0u64;
    each_line(&jp, &mut |line| {
        let (rel, want) = if let Some(rest) = line.strip_prefix("set\t") {
            match parse_line(rest) {
                Some((p, m)) => (p, Some(m)),
                // A line cut short by the kill: its step never ran.
                None => return Ok(()),
            }
        } else if let Some(rest) = line.strip_prefix("del\t") {
            (unesc(rest), None)
        } else {
            return Ok(());
        };
        if !is_tree_path(&rel) {
            return Ok(());
        }
        let (parent, name) = at::split(&rel);
        let live = match dc.open(parent)? {
            Opened::Dir(d) => at::lstat_at(d, name)?.map(|st| (d, st)),
            Opened::Missing(_) => None,
            // Below a file or a symlink nothing of the tree can be: a removal there is done
            // (the killed run went on to put a file where its directory was).
            Opened::Blocked(_) if want.is_none() => None,
            Opened::Blocked(_) => return Ok(()),
        };
        match (want, live) {
            (None, None) => {
                let below: Vec<String> = sets
                    .range(rel.clone()..)
                    .take_while(|(k, _)| k.starts_with(rel.as_str()))
                    .filter(|(k, _)| super::under(k, &rel))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in below {
                    sets.remove(&k);
                }
                dels.insert(rel);
                recorded += 1;
            }
            (Some(mut m), Some((d, st))) if equals_manifest(&m, &st, d, name, &mut None)? => {
                m.live = quick(&st);
                sets.insert(rel, m);
                recorded += 1;
            }
            _ => {}
        }
        Ok(())
    })?;
    if recorded > 0 {
        rewrite(cfg, &sets, &dels)?;
        log::info!("recorded {recorded} finished step(s) of an interrupted run in the manifest");
    }
    std::fs::remove_file(&jp).with_context(|| format!("removing {}", jp.display()))?;
    Ok(true)
}

/// Removes the manifest's and its delta's temporary files (`manifest.tsv.tmp.<pid>`,
/// `manifest.delta.tsv.tmp.<pid>`) a run killed while writing them left in the state directory
/// (root's, not the tree): under the run lock no other run is writing one.
fn remove_state_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let temp = ["manifest.tsv.tmp.", "manifest.delta.tsv.tmp."]
            .iter()
            .any(|p| {
                name.strip_prefix(p)
                    .is_some_and(|pid| pid.parse::<u32>().is_ok())
            });
        if temp && e.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => log::info!("removed {name}, left by an interrupted run"),
                Err(err) => log::warn!("removing {}: {err}", e.path().display()),
            }
        }
    }
}

/// Calls `f` with each line of the journal, read a line at a time.
fn each_line(jp: &Path, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    let file = std::fs::File::open(jp).with_context(|| format!("reading {}", jp.display()))?;
    let mut r = std::io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", jp.display()))?;
        if n == 0 {
            return Ok(());
        }
        // A line that is not UTF-8 was cut or damaged: its step is not taken.
        if let Ok(l) = std::str::from_utf8(&line) {
            f(l.trim_end_matches('\n'))?;
        }
    }
}

/// The manifest with the finished steps applied, streamed from the old one: removed subtrees
/// leave it, what was put in place replaces or joins it.
fn rewrite(cfg: &Config, sets: &BTreeMap<String, MEntry>, dels: &BTreeSet<String>) -> Result<()> {
    let deleted = |p: &str| {
        !dels.is_empty() && {
            let mut a = p;
            loop {
                if dels.contains(a) {
                    break true;
                }
                match a.rfind('/') {
                    Some(i) => a = &a[..i],
                    None => break false,
                }
            }
        }
    };
    let mut old = Reader::open(cfg)?;
    let mut w = Writer::create(cfg)?;
    let mut new = sets.iter().peekable();
    while old.next()? {
        let p = old.path();
        while let Some((k, m)) = new.next_if(|(k, _)| k.as_str() < p) {
            w.entry(k, m)?;
        }
        if let Some((k, m)) = new.next_if(|(k, _)| k.as_str() == p) {
            w.entry(k, m)?;
        } else if !deleted(p) {
            w.raw(old.raw())?;
        }
    }
    for (k, m) in new {
        w.entry(k, m)?;
    }
    w.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_writes_temp_files_go_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for f in [
            "manifest.tsv.tmp.123",
            "manifest.delta.tsv.tmp.45",
            "manifest.tsv.tmp.x",
            "manifest.tsv",
            "manifest.delta.tsv",
            "journal",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        std::fs::create_dir(d.join("manifest.tsv.tmp.9")).unwrap();
        remove_state_temps(d);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "journal",
                "manifest.delta.tsv",
                "manifest.tsv",
                "manifest.tsv.tmp.9",
                "manifest.tsv.tmp.x"
            ]
        );
    }
}
