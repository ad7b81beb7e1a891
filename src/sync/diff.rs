//! `mw-experimental diff`: engineers' edits to the tree against the manifest of the last sync
//! (`M`/`A`/`D` per path, as text or JSON), with unified patches against the image last synced
//! on `--patch`. It only reads: it must never write to the tree or the state, and never follow a
//! symlink of the live tree (a blocked path is reported as modified, not entered).

use super::live::{collect_added, equals_manifest, read_at};
use super::manifest::{LastSync, Manifest};
use super::{in_scope, scope_of, sync_dir, under};
use crate::config::Config;
use crate::fs::at::{self, DirCache, Opened};
use crate::image::{self, Kind};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;

/// Engineers' edits. Returns the report for stdout (text or JSON per `json`) and whether any
/// edit was found.
pub fn diff(cfg: &Config, paths: &[PathBuf], patch: bool, json: bool) -> Result<(String, bool)> {
    let scope = scope_of(cfg, paths)?;
    let manifest = Manifest::read(cfg)?;
    // The last sync's record says whether the tree was synced: an image with nothing at
    // `image.path` leaves an empty manifest, and the tree then still has edits to list.
    if manifest.entries.is_empty() && LastSync::read(cfg)?.is_none() {
        bail!(
            "diff: the tree {} was never synced (no manifest in {}); run `mw-experimental sync` first",
            cfg.code.path.display(),
            sync_dir(cfg).display()
        );
    }
    let root = at::open_dir_path(&cfg.code.path)
        .with_context(|| format!("opening the code tree {}", cfg.code.path.display()))?;
    let mut dc = DirCache::new(rustix::io::dup(&root)?);
    let mut modified = Vec::new();
    let mut deleted = Vec::new();
    let mut added = Vec::new();
    let mut blocked: Option<String> = None;
    for (p, m) in &manifest.entries {
        if !in_scope(&scope, p) {
            continue;
        }
        if blocked.as_ref().is_some_and(|b| under(p, b)) {
            continue;
        }
        let (parent, name) = at::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(_) => {
                deleted.push(p.clone());
                continue;
            }
            Opened::Blocked(b) => {
                modified.push(b.clone());
                blocked = Some(b);
                continue;
            }
        };
        match at::lstat_at(d, name)? {
            None => deleted.push(p.clone()),
            Some(st) => {
                if !equals_manifest(m, &st, d, name, &mut None)? {
                    modified.push(p.clone());
                }
            }
        }
    }
    modified.sort();
    modified.dedup();
    for s in &scope {
        collect_added(
            &mut dc,
            s,
            &|p| manifest.entries.contains_key(p),
            &mut added,
        )?;
    }
    let mut patches = BTreeMap::new();
    if patch && !modified.is_empty() {
        let last = LastSync::read(cfg)?;
        let img = match &last {
            Some(l) => image::by_digest(cfg, &l.digest)?,
            None => None,
        };
        match img {
            None => {
                patches.insert(
                    String::new(),
                    "the image last synced is no longer available: no patches\n".to_string(),
                );
            }
            Some(mut img) => {
                let mut notes = Vec::new();
                let tree = img.tree(&mut notes)?;
                let wanted: Vec<String> = modified
                    .iter()
                    .filter(|p| tree.get(*p).is_some_and(|e| e.kind == Kind::File))
                    .cloned()
                    .collect();
                let mut old_texts = HashMap::new();
                img.fetch(&wanted, &mut |rel, r| {
                    let mut buf = Vec::new();
                    r.take(8 << 20).read_to_end(&mut buf)?;
                    old_texts.insert(rel.to_string(), buf);
                    Ok(())
                })?;
                for p in &wanted {
                    let old = &old_texts[p];
                    let (parent, name) = at::split(p);
                    let Opened::Dir(d) = dc.open(parent)? else {
                        continue;
                    };
                    let new = read_at(d, name, 8 << 20)?;
                    match (std::str::from_utf8(old), std::str::from_utf8(&new)) {
                        (Ok(o), Ok(n)) => {
                            let text = similar::TextDiff::from_lines(o, n)
                                .unified_diff()
                                .header(&format!("image/{p}"), &format!("live/{p}"))
                                .to_string();
                            patches.insert(p.clone(), text);
                        }
                        _ => {
                            patches.insert(
                                p.clone(),
                                format!("Binary files image/{p} and live/{p} differ\n"),
                            );
                        }
                    }
                }
            }
        }
    }
    let differs = !(modified.is_empty() && added.is_empty() && deleted.is_empty());
    let out = if json {
        let mut v = json!({"modified": modified, "added": added, "deleted": deleted});
        if patch {
            v["patches"] = json!(patches);
        }
        format!("{v}\n")
    } else {
        let mut s = String::new();
        for p in &modified {
            let _ = writeln!(s, "M {p}");
        }
        for p in &added {
            let _ = writeln!(s, "A {p}");
        }
        for p in &deleted {
            let _ = writeln!(s, "D {p}");
        }
        for t in patches.values() {
            s.push_str(t);
        }
        s
    };
    Ok((out, differs))
}
