//! The merge of a layered image's entries into its code tree: every layer's entries (under
//! `image.path` and on the way to it) are in one set of tree parts and one node vector, each node
//! carrying its position (layer, tar index), which is also its sequence. One sort by (path,
//! sequence); hard links resolved against what was visible when they were read; then one pass
//! keeps the last entry of each path unless a whiteout or opaque marker of a higher layer, or a
//! non-directory of a higher sequence at an ancestor, hides it (as applying the layers one by one
//! would), checks that `image.path` is a directory all the way down, drops (with a note) what is
//! below a file or symlink, and adds missing directories (0755). It works on data only: it must
//! never read the disk, and never keep a path outside `image.path` in the tree. Over 500 lines:
//! its unit tests, which pin the merge to what applying the layers one by one gives, sit with it.

use super::layers::{decode_pos, place, CHAIN};
use super::tree::{Node, Parts};
use super::{Entry, Kind, Tree};
use anyhow::{bail, Result};
use std::collections::HashMap;

/// The whiteouts and opaque directories of all layers: path -> the layers that hold one.
#[derive(Default)]
pub(super) struct Marks {
    whiteouts: HashMap<String, Vec<usize>>,
    opaque: HashMap<String, Vec<usize>>,
}

impl Marks {
    pub(super) fn add(&mut self, layer: usize, whiteouts: Vec<String>, opaque: Vec<String>) {
        for w in whiteouts {
            self.whiteouts.entry(w).or_default().push(layer);
        }
        for o in opaque {
            self.opaque.entry(o).or_default().push(layer);
        }
    }

    /// The marks as seen from below `prefix`, by paths relative to it: a whiteout or opaque
    /// marker of `prefix`, of a directory on the way to it or of the image root hides all that
    /// lower layers had below `prefix`, as an opaque marker of the tree's root does.
    fn below(&self, prefix: &str) -> Marks {
        let mut m = Marks::default();
        for (map, opaque) in [(&self.whiteouts, false), (&self.opaque, true)] {
            for (p, layers) in map {
                let slot = match place(prefix, p) {
                    Some((rel, false)) if opaque => m.opaque.entry(rel.to_string()),
                    Some((rel, false)) => m.whiteouts.entry(rel.to_string()),
                    Some((_, true)) => m.opaque.entry(String::new()),
                    None if opaque && p.is_empty() => m.opaque.entry(String::new()),
                    None => continue,
                };
                slot.or_default().extend(layers);
            }
        }
        m
    }

    /// Whether a whiteout (of `p` or an ancestor) or an opaque marker (of an ancestor) of a
    /// layer strictly between `lo` and `hi` hides `p`.
    fn hides(&self, p: &str, lo: usize, hi: usize) -> bool {
        if self.whiteouts.is_empty() && self.opaque.is_empty() {
            return false;
        }
        let between =
            |v: Option<&Vec<usize>>| v.is_some_and(|v| v.iter().any(|&l| lo < l && l < hi));
        if between(self.whiteouts.get(p)) {
            return true;
        }
        let mut a = p;
        loop {
            let parent = a.rfind('/').map_or("", |i| &a[..i]);
            if between(self.opaque.get(parent)) {
                return true;
            }
            if parent.is_empty() {
                return false;
            }
            if between(self.whiteouts.get(parent)) {
                return true;
            }
            a = parent;
        }
    }
}

/// A hard link waiting for its target: a `File` node with a `target` (a file never has one).
fn is_link(n: &Node) -> bool {
    n.kind() == Kind::File && n.has_target()
}

#[cfg(test)]
fn dir_0755() -> Entry {
    Entry {
        kind: Kind::Dir,
        mode: 0o755,
        size: 0,
        mtime: 0,
        mtime_nsec: 0,
        hash: None,
        target: None,
    }
}

/// The code tree below `prefix` of the layers' nodes (see the module's comment): nodes below
/// `prefix` by their path relative to it, those of `prefix` and on the way to it (marked
/// [`CHAIN`]) by their full path.
pub(super) fn merge(
    mut parts: Parts,
    mut nodes: Vec<Node>,
    marks: &Marks,
    prefix: &str,
    reference: &str,
    notes: &mut Vec<String>,
) -> Result<Tree> {
    parts.shrink_to_fit();
    // The tree's nodes first, sorted by (path, sequence); then the few on the way to it.
    nodes.sort_unstable_by(|a, b| {
        (a.pos & CHAIN)
            .cmp(&(b.pos & CHAIN))
            .then_with(|| parts.cmp(a, b))
            .then({ a.pos }.cmp(&{ b.pos }))
    });
    let mut chain = nodes.split_off(nodes.partition_point(|n| n.pos & CHAIN == 0));
    for n in &mut chain {
        n.pos &= !CHAIN;
    }
    let rel_marks;
    let rm = if prefix.is_empty() {
        marks
    } else {
        rel_marks = marks.below(prefix);
        &rel_marks
    };
    // Where a resolved hard link's content is (by the link's sequence).
    let content = resolve_links(&mut parts, &mut nodes, &chain, rm, prefix, notes)?;
    let parts = parts;
    // The tree root must be a real directory all the way down in the image; what a
    // non-directory on the way to it hid stays hidden.
    let mut root_hide = 0u64;
    if !prefix.is_empty() {
        let mut end = 0;
        for c in prefix.split('/') {
            end += c.len() + usize::from(end > 0);
            let acc = &prefix[..end];
            let r = run(&parts, &chain, acc);
            for n in &chain[r.clone()] {
                if n.kind() != Kind::Dir {
                    root_hide = root_hide.max(n.pos);
                }
            }
            if let Some(w) = chain[r].last() {
                let hidden = marks.hides(acc, decode_pos(w.pos).0, usize::MAX) || root_hide > w.pos;
                if !hidden && w.kind() != Kind::Dir {
                    bail!(
                        "in the image {}, /{acc} is not a directory (a {}); image.path must be a directory of the image",
                        reference,
                        if w.kind() == Kind::Symlink { "symlink" } else { "file" }
                    );
                }
            }
        }
    }
    drop(chain);
    // Directories of the output, by their index in the table of directories (-> the highest
    // sequence of a non-directory at it or an ancestor: what is older is hidden below it;
    // `u64::MAX`: not in the output).
    const NONE: u64 = u64::MAX;
    let mut dirs: Vec<u64> = Vec::new();
    let mut implicit: Vec<Node> = Vec::new();
    let mut w = 0;
    let mut r = 0;
    let hi = nodes.len();
    let mut p = String::new();
    while r < hi {
        parts.path_into(&nodes[r], &mut p);
        let mut end = r + 1;
        let mut nondir = 0;
        if nodes[r].kind() != Kind::Dir {
            nondir = nodes[r].pos;
        }
        while end < hi && parts.same(&nodes[end], &nodes[r]) {
            if nodes[end].kind() != Kind::Dir {
                nondir = nondir.max(nodes[end].pos);
            }
            end += 1;
        }
        let win = end - 1;
        r = end;
        let seq = nodes[win].pos;
        if rm.hides(&p, decode_pos(seq).0, usize::MAX) {
            continue;
        }
        let rel = p.as_str();
        // The nearest ancestor in the output, and the ones missing on the way to it (each a
        // directory of the table: it holds every ancestor of every entry).
        let mut missing: Vec<u32> = Vec::new();
        let mut anc = rel;
        let parent = loop {
            let Some(i) = anc.rfind('/') else {
                break Ok(root_hide);
            };
            anc = &anc[..i];
            let d = parts.find_dir(anc);
            if let Some(&h) = d.and_then(|d| dirs.get(d as usize)).filter(|&&h| h != NONE) {
                break Ok(h);
            }
            let found = nodes[..w].binary_search_by(|n| parts.cmp_str(n, anc));
            if let Ok(j) = found {
                break Err(nodes[j].pos);
            }
            missing.extend(d);
        };
        let hide = match parent {
            Ok(h) if h > seq => continue,
            Ok(h) => h,
            // Under a file or symlink: hidden if that came later, else reported.
            Err(pseq) if pseq > seq => continue,
            Err(_) => {
                notes.push(format!(
                    "image: dropped {rel:?}: a parent of it is a symlink or a file in the image"
                ));
                continue;
            }
        };
        let mut set = |d: u32, h: u64| {
            if dirs.len() <= d as usize {
                dirs.resize(d as usize + 1, NONE);
            }
            dirs[d as usize] = h;
        };
        for m in missing {
            implicit.push(parts.dir_node(m));
            set(m, hide);
        }
        if nodes[win].kind() == Kind::Dir {
            if let Some(d) = parts.find_dir(rel) {
                set(d, hide.max(nondir));
            }
        }
        nodes.swap(w, win);
        w += 1;
    }
    drop(dirs);
    nodes.truncate(w);
    if !implicit.is_empty() {
        nodes.append(&mut implicit);
        nodes.sort_unstable_by(|a, b| parts.cmp(a, b));
    }
    if !content.is_empty() {
        for n in &mut nodes {
            if let Some(&c) = content.get(&{ n.pos }) {
                n.pos = c;
            }
        }
    }
    nodes.shrink_to_fit();
    Ok(Tree::from_parts(parts, nodes))
}

/// The nodes (sorted by path) at `p`.
fn run(parts: &Parts, nodes: &[Node], p: &str) -> std::ops::Range<usize> {
    let lo = nodes.partition_point(|n| parts.cmp_str(n, p).is_lt());
    let hi = lo + nodes[lo..].partition_point(|n| parts.cmp_str(n, p).is_eq());
    lo..hi
}

/// Resolves each hard link (in the order they were read) to the entry at its target that was
/// visible when it was read (same layer before it, or lower, not hidden since), which must be a
/// file of the tree. The link becomes a copy of that file (its own mtime); links that do not
/// resolve are dropped with a note. Returns link sequence -> content position.
fn resolve_links(
    parts: &mut Parts,
    nodes: &mut Vec<Node>,
    chain: &[Node],
    marks: &Marks,
    prefix: &str,
    notes: &mut Vec<String>,
) -> Result<HashMap<u64, u64>> {
    let mut links: Vec<(u64, usize)> = (0..nodes.len())
        .filter(|&i| is_link(&nodes[i]))
        .map(|i| (nodes[i].pos, i))
        .collect();
    let mut content = HashMap::new();
    if links.is_empty() {
        return Ok(content);
    }
    links.sort_unstable();
    let mut dead = false;
    for (seq, i) in links {
        let src = {
            let parts = &*parts;
            let full = parts.target(&nodes[i]).unwrap_or_default();
            // Only a file below `prefix` can be a target (one on the way to it is a directory).
            let t = match place(prefix, full) {
                Some((rel, false)) => rel,
                _ => "",
            };
            let layer = decode_pos(seq).0;
            nodes[run(parts, nodes, t)]
                .iter()
                .rfind(|n| n.pos < seq)
                .filter(|c| {
                    let cl = decode_pos(c.pos).0;
                    if marks.hides(t, cl, layer) {
                        return false;
                    }
                    // A non-directory put at an ancestor since then removed it.
                    let since = |n: &Node| n.kind() != Kind::Dir && c.pos < n.pos && n.pos < seq;
                    if chain.iter().any(since) {
                        return false;
                    }
                    let mut a = t;
                    while let Some(k) = a.rfind('/') {
                        a = &a[..k];
                        if nodes[run(parts, nodes, a)].iter().any(since) {
                            return false;
                        }
                    }
                    true
                })
                .filter(|c| c.kind() == Kind::File && !is_link(c) && c.has_hash())
                .map(|c| {
                    (
                        parts.entry(c),
                        *content.get(&{ c.pos }).unwrap_or(&{ c.pos }),
                    )
                })
        };
        match src {
            Some((src, pos)) => {
                let mtime = nodes[i].mtime();
                parts.set_entry(&mut nodes[i], &Entry { mtime, ..src })?;
                content.insert(seq, pos);
            }
            None => {
                let path = parts.path(&nodes[i]);
                let path = if prefix.is_empty() {
                    path.to_string()
                } else {
                    format!("{prefix}/{path}")
                };
                notes.push(format!(
                    "image: dropped the hard link {path:?}: its target is not a file of the tree"
                ));
                dead = true;
            }
        }
    }
    if dead {
        nodes.retain(|n| !is_link(n));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    enum I {
        D(&'static str),
        F(&'static str, u8),
        L(&'static str, &'static str),
        S(&'static str),
        Wh(&'static str),
        Opq(&'static str),
    }

    /// One entry of a merged tree: path, kind letter, first hash byte, position.
    type Row = (String, char, u8, u64);

    /// The tree below `prefix` of these layers, and the notes.
    fn merged(prefix: &str, layers: &[Vec<I>]) -> Result<(Vec<Row>, Vec<String>)> {
        let mut ing = crate::image::layers::Ingest::new(prefix);
        for (li, items) in layers.iter().enumerate() {
            let (mut wh, mut opq) = (Vec::new(), Vec::new());
            for (ei, it) in items.iter().enumerate() {
                let (p, kind, hash, target) = match *it {
                    I::D(p) => (p, Kind::Dir, None, None),
                    I::F(p, h) => (p, Kind::File, Some([h; 32]), None),
                    I::L(p, t) => (p, Kind::File, None, Some(t.to_string())),
                    I::S(p) => (p, Kind::Symlink, None, Some("x".to_string())),
                    I::Wh(p) => {
                        wh.push(p.to_string());
                        continue;
                    }
                    I::Opq(p) => {
                        opq.push(p.to_string());
                        continue;
                    }
                };
                let mut entry = dir_0755();
                entry.kind = kind;
                entry.hash = hash;
                entry.target = target;
                assert!(ing.add(p, &entry, li, ei as u64).unwrap(), "{p}");
            }
            ing.marks.add(li, wh, opq);
        }
        let mut notes = Vec::new();
        let t = merge(ing.parts, ing.nodes, &ing.marks, prefix, "img", &mut notes)?;
        let list = (0..t.len())
            .map(|i| {
                let e = t.entry(i);
                (
                    t.path(i).to_string(),
                    e.kind.letter(),
                    e.hash.map_or(0, |h| h[0]),
                    t.pos(i),
                )
            })
            .collect();
        Ok((list, notes))
    }

    #[test]
    fn layers_merge_as_if_applied_one_by_one() {
        use I::*;
        let (tree, notes) = merged(
            "srv/mw",
            &[
                vec![
                    D("srv"),
                    D("srv/mw"),
                    D("srv/mw/a"),
                    F("srv/mw/a/x", 1),
                    F("srv/mw/a/y", 2),
                    D("srv/mw/b"),
                    F("srv/mw/b/z", 3),
                    F("srv/mw/c", 4),
                    D("srv/mw/o"),
                    F("srv/mw/o/old", 5),
                    F("srv/mw/keep", 6),
                    F("srv/mw/d/e/deep", 7),
                ],
                vec![
                    Wh("srv/mw/a/x"),
                    F("srv/mw/b", 8),
                    D("srv/mw/c"),
                    F("srv/mw/c/n", 9),
                    Opq("srv/mw/o"),
                    F("srv/mw/o/new", 10),
                    L("srv/mw/h", "srv/mw/keep"),
                    L("srv/mw/bad", "srv/mw/nothing"),
                    S("srv/mw/s"),
                    F("srv/mw/s/under", 11),
                ],
                vec![
                    F("srv/mw/b/late", 12),
                    L("srv/mw/h2", "srv/mw/a/x"),
                    L("srv/mw/h3", "srv/mw/h"),
                ],
            ],
        )
        .unwrap();
        let got: Vec<(&str, char, u8)> = tree.iter().map(|t| (t.0.as_str(), t.1, t.2)).collect();
        assert_eq!(
            got,
            [
                ("a", 'd', 0),
                ("a/y", 'f', 2),
                ("b", 'f', 8),
                ("c", 'd', 0),
                ("c/n", 'f', 9),
                ("d", 'd', 0),
                ("d/e", 'd', 0),
                ("d/e/deep", 'f', 7),
                ("h", 'f', 6),
                ("h3", 'f', 6),
                ("keep", 'f', 6),
                ("o", 'd', 0),
                ("o/new", 'f', 10),
                ("s", 'l', 0),
            ]
        );
        // A hard link's content is where its target's is, also through another link.
        let pos = |p: &str| tree.iter().find(|t| t.0 == p).unwrap().3;
        assert_eq!(pos("h"), pos("keep"));
        assert_eq!(pos("h3"), pos("keep"));
        let has = |s: &str| notes.iter().any(|n| n.contains(s));
        assert!(has("hard link \"srv/mw/bad\""), "{notes:?}");
        assert!(has("hard link \"srv/mw/h2\""), "{notes:?}");
        assert!(
            has("dropped \"s/under\": a parent of it is a symlink or a file"),
            "{notes:?}"
        );
        assert!(
            has("dropped \"b/late\": a parent of it is a symlink or a file"),
            "{notes:?}"
        );
        // b/z went silently with the directory b; nothing else was reported.
        assert_eq!(notes.len(), 4, "{notes:?}");
    }

    #[test]
    fn image_path_must_be_a_directory_all_the_way_down() {
        use I::*;
        let e = merged(
            "srv/mw",
            &[
                vec![D("srv"), D("srv/mw"), F("srv/mw/f", 1)],
                vec![F("srv", 2)],
            ],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("in the image img, /srv is not a directory (a file)"),
            "{e}"
        );
        // A directory again above it: what the file hid stays hidden, what came later shows.
        let (tree, notes) = merged(
            "srv/mw",
            &[
                vec![D("srv"), D("srv/mw"), F("srv/mw/f", 1)],
                vec![F("srv", 2)],
                vec![D("srv"), F("srv/mw/g", 3)],
            ],
        )
        .unwrap();
        assert_eq!(tree.len(), 1, "{tree:?}");
        assert_eq!(tree[0].0, "g");
        assert!(notes.is_empty(), "{notes:?}");
        // A hard link to a file outside image.path does not resolve.
        let (tree, notes) = merged(
            "srv/mw",
            &[vec![F("srv/mw/f", 1), L("srv/mw/out", "srv/mw-other/x")]],
        )
        .unwrap();
        assert_eq!(tree.len(), 1, "{tree:?}");
        assert!(notes[0].contains("hard link \"srv/mw/out\""), "{notes:?}");
        // A whiteout of an ancestor of image.path hides all that was below it.
        let (tree, _) = merged(
            "srv/mw",
            &[vec![F("srv/mw/f", 1)], vec![Wh("srv"), F("srv/mw/g", 3)]],
        )
        .unwrap();
        let got: Vec<&str> = tree.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(got, ["g"]);
    }
}
