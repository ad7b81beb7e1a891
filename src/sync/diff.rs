//! `mw-experimental diff`: engineers' edits to the tree against the manifest of the last sync
//! (`M`/`A`/`D` per path, as text or JSON), with unified patches against the image last synced
//! on `--patch`, or per-file counts of changed lines on `--stat`. It only reads: it must never write to the tree or the state, and never follow a
//! symlink of the live tree (a blocked path is reported as modified, not entered).

use super::live::{collect_added, equals_manifest, read_at};
use super::manifest::{LastSync, Reader};
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
/// edit was found. Text starts with a one-line summary; `patch` adds unified diffs, `stat` the
/// changed-line counts per file.
pub fn diff(
    cfg: &Config,
    paths: &[PathBuf],
    patch: bool,
    stat: bool,
    json: bool,
) -> Result<(String, bool)> {
    let scope = scope_of(cfg, paths)?;
    // The manifest is streamed (at a million entries it is ~150 MB of text); only the paths in
    // scope are kept, to tell engineers' additions from ours.
    let mut man = Reader::open(cfg)?;
    let mut known: Vec<String> = Vec::new();
    let mut first = man.next()?;
    // The last sync's record says whether the tree was synced: an image with nothing at
    // `image.path` leaves an empty manifest, and the tree then still has edits to list.
    if !first && LastSync::read(cfg)?.is_none() {
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
    while first || man.next()? {
        first = false;
        let p = man.path();
        if !in_scope(&scope, p) {
            continue;
        }
        known.push(p.to_string());
        if blocked.as_ref().is_some_and(|b| under(p, b)) {
            continue;
        }
        let (parent, name) = at::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(_) => {
                deleted.push(p.to_string());
                continue;
            }
            Opened::Blocked(b) => {
                modified.push(b.clone());
                blocked = Some(b);
                continue;
            }
        };
        match at::lstat_at(d, name)? {
            None => deleted.push(p.to_string()),
            Some(st) => {
                if !equals_manifest(&man.entry()?, &st, d, name, &mut None)? {
                    modified.push(p.to_string());
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
            &|p| known.binary_search_by(|k| k.as_str().cmp(p)).is_ok(),
            &mut added,
        )?;
    }
    let mut patches = BTreeMap::new();
    // Per path: (lines inserted, lines deleted), or None for a binary file.
    let mut stats: BTreeMap<String, Option<(u64, u64)>> = BTreeMap::new();
    if (patch || stat) && !(modified.is_empty() && deleted.is_empty()) {
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
                let wanted: Vec<usize> = modified
                    .iter()
                    .chain(if stat { &deleted[..] } else { &[] })
                    .filter_map(|p| tree.find(p))
                    .filter(|&i| tree.entry(i).kind == Kind::File)
                    .collect();
                let mut old_texts = HashMap::new();
                img.fetch(&tree, &wanted, &mut |i, r| {
                    let mut buf = Vec::new();
                    r.take(8 << 20).read_to_end(&mut buf)?;
                    old_texts.insert(i, buf);
                    Ok(())
                })?;
                for &i in &wanted {
                    let old = &old_texts[&i];
                    let p = &tree.path(i).to_string();
                    if deleted.contains(p) {
                        stats.insert(p.clone(), line_count(old).map(|n| (0, n)));
                        continue;
                    }
                    let (parent, name) = at::split(p);
                    let Opened::Dir(d) = dc.open(parent)? else {
                        continue;
                    };
                    let new = read_at(d, name, 8 << 20)?;
                    match (std::str::from_utf8(old), std::str::from_utf8(&new)) {
                        (Ok(o), Ok(n)) if stat => {
                            let (mut ins, mut del) = (0, 0);
                            for c in similar::TextDiff::from_lines(o, n).iter_all_changes() {
                                match c.tag() {
                                    similar::ChangeTag::Insert => ins += 1,
                                    similar::ChangeTag::Delete => del += 1,
                                    similar::ChangeTag::Equal => {}
                                }
                            }
                            stats.insert(p.clone(), Some((ins, del)));
                        }
                        _ if stat => {
                            stats.insert(p.clone(), None);
                        }
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
    if stat {
        for p in &added {
            let (parent, name) = at::split(p);
            if let Opened::Dir(d) = dc.open(parent)? {
                if let Ok(Some(st)) = at::lstat_at(d, name) {
                    if at::file_type(&st) == rustix::fs::FileType::RegularFile {
                        let text = read_at(d, name, 8 << 20)?;
                        stats.insert(p.clone(), line_count(&text).map(|n| (n, 0)));
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
        if stat {
            v["stat"] = stats
                .iter()
                .map(|(p, s)| {
                    let v = match s {
                        Some((i, d)) => json!({"insertions": i, "deletions": d}),
                        None => json!({"binary": true}),
                    };
                    (p.clone(), v)
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        format!("{v}\n")
    } else {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "diff: {} modified, {} added, {} deleted against the image last synced",
            modified.len(),
            added.len(),
            deleted.len()
        );
        if stat {
            s.push_str(&render_stat(&stats));
            return Ok((
                s,
                !(modified.is_empty() && added.is_empty() && deleted.is_empty()),
            ));
        }
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

/// Lines of a text; `None` when it is not UTF-8 (a binary file).
fn line_count(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    Some(text.lines().count() as u64)
}

/// `git diff --stat`'s shape: ` path | N +++---` per file, then the totals.
fn render_stat(stats: &BTreeMap<String, Option<(u64, u64)>>) -> String {
    let mut s = String::new();
    let width = stats.keys().map(|p| p.chars().count()).max().unwrap_or(0);
    let most = stats
        .values()
        .map(|v| v.map(|(i, d)| i + d).unwrap_or(0))
        .max()
        .unwrap_or(0)
        .max(1);
    let (mut ins, mut del) = (0, 0);
    for (p, v) in stats {
        match v {
            None => {
                let _ = writeln!(s, " {p:<width$} | Bin");
            }
            Some((i, d)) => {
                ins += i;
                del += d;
                // At most 50 signs, in proportion; at least one for a non-zero count.
                let scale = |n: u64| {
                    if n == 0 {
                        0
                    } else {
                        ((n * 50).div_ceil(most.max(50))).max(1) as usize
                    }
                };
                let _ = writeln!(
                    s,
                    " {p:<width$} | {:>5} {}{}",
                    i + d,
                    "+".repeat(scale(*i)),
                    "-".repeat(scale(*d))
                );
            }
        }
    }
    let _ = writeln!(
        s,
        " {} file{} changed, {ins} insertion{}(+), {del} deletion{}(-)",
        stats.len(),
        if stats.len() == 1 { "" } else { "s" },
        if ins == 1 { "" } else { "s" },
        if del == 1 { "" } else { "s" }
    );
    s
}
