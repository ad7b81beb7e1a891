//! `mw-experimental diff`: engineers' edits to the tree against the manifest of the last sync
//! (`M`/`A`/`D` per path, with who last changed each and when, as text or JSON), with unified
//! patches against the image last synced on `--patch`, or per-file counts of changed lines on
//! `--stat`; `--mine` keeps the caller's own. The same scan, summed per editor, is the census
//! that `sync` and `reset` record for `status`, the banner and the fact ([`census`]). It only
//! reads: it must never write to the tree or the state, and never follow a symlink of the live
//! tree (a blocked path is reported as modified, not entered; entries are `lstat`ed from their
//! parent's fd, and only a file's metadata is read to name its editor).
//!
//! Who: the file system keeps no writer, only an owner, and a deployer cannot give a file away.
//! So an entry whose inode is not the one the sync recorded (an editor's write-and-rename, a
//! file turned into something else) or that the manifest does not know (created here) was made
//! by its owner. A file written in place keeps its inode and the owner the sync gave it (root)
//! or the tree's owner (`code.owner`): its editor is unknown; an in-place write to a file owned
//! by anyone else is that owner's (the file was theirs before the sync adopted it). A deletion
//! leaves nothing to ask: unknown. When: the entry's mtime (what editors set; the ctime moves
//! when `apply permissions` fixes an ACL); for a deletion, the mtime of the directory it was in,
//! the last change there, at or after the deletion.

use super::editors::{
    describe_counts, edit, editor_of_modified, per_editor, Census, Change, Edit, Names, RECENT,
};
use super::live::{collect_added, equals_manifest, kind_of, read_at};
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

/// The tree's edits in `scope`: modified (sorted), added (in walk order), deleted (in manifest
/// order), each with its editor and time; and the directory cache, for reading files after.
struct Scan {
    modified: Vec<Edit>,
    added: Vec<Edit>,
    deleted: Vec<Edit>,
    dc: DirCache,
}

fn scan(cfg: &Config, scope: &[String]) -> Result<Scan> {
    // The manifest is streamed (at a million entries it is ~150 MB of text); only the paths in
    // scope are kept, to tell engineers' additions from ours.
    let mut man = Reader::open(cfg)?;
    let mut known = super::paths::PathSet::default();
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
    let mut tree_owners = vec![0];
    tree_owners.extend(crate::accounts::user_uid(&cfg.code.owner));
    let mut names = Names::default();
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
        if !in_scope(scope, p) {
            continue;
        }
        known.push(p)?;
        if blocked.as_ref().is_some_and(|b| under(p, b)) {
            continue;
        }
        let (parent, name) = at::split(p);
        let d = match dc.open(parent)? {
            Opened::Dir(d) => d,
            Opened::Missing(_) => {
                deleted.push(edit(p.to_string(), Change::Deleted, None, None, &mut names));
                continue;
            }
            Opened::Blocked(b) => {
                // A directory of ours replaced by a symlink or a file: a new inode, its owner's.
                let (bp, bn) = at::split(&b);
                let st = match dc.open(bp)? {
                    Opened::Dir(bd) => at::lstat_at(bd, bn)?,
                    _ => None,
                };
                let who = st.as_ref().map(|s| s.st_uid);
                modified.push(edit(
                    b.clone(),
                    Change::Modified,
                    who,
                    st.as_ref(),
                    &mut names,
                ));
                blocked = Some(b);
                continue;
            }
        };
        match at::lstat_at(d, name)? {
            None => {
                let dir = rustix::fs::fstat(d).ok();
                deleted.push(edit(
                    p.to_string(),
                    Change::Deleted,
                    None,
                    dir.as_ref(),
                    &mut names,
                ));
            }
            Some(st) => {
                let m = man.entry()?;
                if !equals_manifest(&m, &st, d, name, &mut None)? {
                    let replaced =
                        kind_of(&st) != Some(m.e.kind) || (m.live.0 != 0 && st.st_ino != m.live.0);
                    let who = editor_of_modified(replaced, st.st_uid, &tree_owners);
                    modified.push(edit(
                        p.to_string(),
                        Change::Modified,
                        who,
                        Some(&st),
                        &mut names,
                    ));
                }
            }
        }
    }
    modified.sort_by(|a, b| a.path.cmp(&b.path));
    modified.dedup_by(|a, b| a.path == b.path);
    let mut added_paths = Vec::new();
    for s in scope {
        collect_added(&mut dc, s, &|p| known.contains(p), &mut added_paths)?;
    }
    log::debug!(
        "diff: the manifest's {} paths in scope held in {} MiB",
        known.len(),
        known.heap_bytes() >> 20
    );
    drop(known);
    // A created entry is its owner's: whoever made it (a deployer cannot give it away).
    for p in added_paths {
        let (parent, name) = at::split(&p);
        let st = match dc.open(parent)? {
            Opened::Dir(d) => at::lstat_at(d, name)?,
            _ => None,
        };
        let who = st.as_ref().map(|s| s.st_uid);
        added.push(edit(p, Change::Added, who, st.as_ref(), &mut names));
    }
    Ok(Scan {
        modified,
        added,
        deleted,
        dc,
    })
}

/// Every edit of the tree, summed per editor, with the [`RECENT`] newest.
pub(super) fn census(cfg: &Config) -> Result<Census> {
    let s = scan(cfg, &[String::new()])?;
    let mut all: Vec<Edit> = s
        .modified
        .into_iter()
        .chain(s.added)
        .chain(s.deleted)
        .collect();
    let by_editor = per_editor(&all);
    // Newest first; unknown times last.
    all.sort_by(|a, b| {
        b.changed_unix
            .unwrap_or(i64::MIN)
            .cmp(&a.changed_unix.unwrap_or(i64::MIN))
            .then_with(|| a.path.cmp(&b.path))
    });
    let total = all.len() as u64;
    all.truncate(RECENT);
    Ok(Census {
        counted_at: crate::state::now().0,
        total,
        by_editor,
        recent: all,
    })
}

/// Whose edits `diff` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    /// Everyone's.
    All,
    /// Only this uid's (`--mine`): edits whose editor is unknown are not anyone's.
    Uid(u32),
}

/// Engineers' edits. Returns the report for stdout (text or JSON per `json`) and whether any
/// edit was found. Text starts with a one-line summary; `patch` adds unified diffs, `stat` the
/// changed-line counts per file.
pub fn diff(
    cfg: &Config,
    paths: &[PathBuf],
    whose: Whose,
    patch: bool,
    stat: bool,
    json: bool,
) -> Result<(String, bool)> {
    let scope = scope_of(cfg, paths)?;
    let Scan {
        modified,
        added,
        deleted,
        mut dc,
    } = scan(cfg, &scope)?;
    let everyone = modified.len() + added.len() + deleted.len();
    let keep = |v: Vec<Edit>| -> Vec<Edit> {
        match whose {
            Whose::All => v,
            Whose::Uid(u) => v.into_iter().filter(|e| e.uid == Some(u)).collect(),
        }
    };
    let (modified_e, added_e, deleted_e) = (keep(modified), keep(added), keep(deleted));
    let all_e: Vec<&Edit> = modified_e
        .iter()
        .chain(&added_e)
        .chain(&deleted_e)
        .collect();
    let others = everyone - all_e.len();
    let paths_of = |v: &[Edit]| -> Vec<String> { v.iter().map(|e| e.path.clone()).collect() };
    let (modified, added, deleted) = (
        paths_of(&modified_e),
        paths_of(&added_e),
        paths_of(&deleted_e),
    );
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
                    .filter(|&i| tree.kind(i) == Kind::File)
                    .collect();
                let mut old_texts = HashMap::new();
                let mut fetch: Vec<u32> = wanted.iter().map(|&i| i as u32).collect();
                img.fetch(&tree, &mut fetch, &mut |i, r| {
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
    let mine = match whose {
        Whose::All => None,
        Whose::Uid(u) => Some((u, crate::accounts::user_name(u))),
    };
    let out = if json {
        let mut v = json!({
            "modified": modified,
            "added": added,
            "deleted": deleted,
            "edits": all_e,
            "editors": per_editor(&all_e.iter().map(|e| (*e).clone()).collect::<Vec<_>>()),
        });
        if let Some((uid, user)) = &mine {
            v["mine"] = json!({"uid": uid, "user": user, "others": others});
        }
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
        let by = match &mine {
            None => String::new(),
            Some((uid, user)) => format!(" by {}", user.clone().unwrap_or(format!("uid {uid}"))),
        };
        let _ = write!(
            s,
            "diff: {} modified, {} added, {} deleted{by} against the image last synced",
            modified.len(),
            added.len(),
            deleted.len()
        );
        if mine.is_some() && others > 0 {
            let _ = write!(
                s,
                " ({others} more by others or unknown: `diff` without --mine lists them)"
            );
        }
        s.push('\n');
        if stat {
            s.push_str(&render_stat(&stats));
            return Ok((s, differs));
        }
        if mine.is_none() && differs {
            let counts = per_editor(&all_e.iter().map(|e| (*e).clone()).collect::<Vec<_>>());
            let _ = writeln!(s, "editors: {}", describe_counts(&counts));
        }
        s.push_str(&render_edits(&all_e));
        for t in patches.values() {
            s.push_str(t);
        }
        s
    };
    Ok((out, differs))
}

/// One line per edit: `M path  editor  time`, the paths padded to one column (up to 60).
fn render_edits(edits: &[&Edit]) -> String {
    let mut s = String::new();
    let pw = edits
        .iter()
        .map(|e| e.path.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    let names: Vec<String> = edits.iter().map(|e| e.editor()).collect();
    let uw = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    for (e, who) in edits.iter().zip(&names) {
        let when = match (&e.changed_at, e.time_of.as_str()) {
            (Some(t), "directory") => format!("by {t}"),
            (Some(t), _) => t.clone(),
            (None, _) => "at an unknown time".into(),
        };
        let _ = writeln!(
            s,
            "{} {:<pw$}  {who:<uw$}  {when}",
            e.change.letter(),
            e.path
        );
    }
    s
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
