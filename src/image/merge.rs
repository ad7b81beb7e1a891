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
#[derive(Clone, Default)]
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

    /// The marks as the tree below `prefix` sees them ([`Marks::below`]; these when the tree is
    /// the image's root).
    fn relative_to(&self, prefix: &str) -> std::borrow::Cow<'_, Marks> {
        if prefix.is_empty() {
            std::borrow::Cow::Borrowed(self)
        } else {
            std::borrow::Cow::Owned(self.below(prefix))
        }
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
    parts: Parts,
    nodes: Vec<Node>,
    marks: &Marks,
    prefix: &str,
    reference: &str,
    notes: &mut Vec<String>,
) -> Result<Tree> {
    let t0 = std::time::Instant::now();
    let (parts, nodes, implicit_dirs) =
        merge_nodes(parts, nodes, marks, (prefix, reference), None, notes)?;
    log::debug!("merged the layers in {:.3}s", t0.elapsed().as_secs_f64());
    let mut t = Tree::from_parts(parts, nodes);
    t.implicit_dirs = implicit_dirs;
    Ok(t)
}

/// The code tree of `base`, the merged tree of the lower layers (from the layer cache), with
/// the nodes `new` of the layers above it on top (their marks in `marks`): the same tree as
/// [`merge`] of all the layers gives, at the cost of the new nodes, not of the whole tree.
/// Only the part of `base` the new layers can change is merged again with them: the paths of
/// the new entries and of their directories (and of hard links' targets), and all below a
/// new non-directory, a whiteout or an opaque directory; the rest of `base` stays as it is
/// and the result is spliced into it. When the new layers reach the tree's root (a marker
/// there, or a non-directory on the way to it), everything is merged again.
pub(super) fn onto(
    mut parts: Parts,
    mut base: Vec<Node>,
    new: Vec<Node>,
    marks: &Marks,
    (prefix, reference): (&str, &str),
    notes: &mut Vec<String>,
) -> Result<Tree> {
    let t0 = std::time::Instant::now();
    let rm = marks.relative_to(prefix);
    let rm = &*rm;
    let whole = rm.opaque.contains_key("")
        || new
            .iter()
            .any(|n| n.pos & CHAIN != 0 && n.kind() != Kind::Dir);
    if whole {
        base.extend(new);
        return merge(parts, base, marks, prefix, reference, notes);
    }
    // The ranges of `base` the new layers can change.
    let mut ranges = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut with_ancestors = |parts: &Parts, p: &str, ranges: &mut Vec<std::ops::Range<usize>>| {
        ranges.push(run(parts, &base, p));
        let mut a = p;
        while let Some(k) = a.rfind('/') {
            a = &a[..k];
            if !seen.insert(a.to_string()) {
                break;
            }
            ranges.push(run(parts, &base, a));
        }
    };
    for n in new.iter().filter(|n| n.pos & CHAIN == 0) {
        let p = parts.path(n);
        with_ancestors(&parts, &p, &mut ranges);
        if n.kind() != Kind::Dir {
            ranges.push(subtree(&parts, &base, &p));
        }
        if is_link(n) {
            if let Some((t, false)) = place(prefix, parts.target(n).unwrap_or_default()) {
                let t = t.to_string();
                with_ancestors(&parts, &t, &mut ranges);
            }
        }
    }
    for p in rm.whiteouts.keys().chain(rm.opaque.keys()) {
        ranges.push(run(&parts, &base, p));
        ranges.push(subtree(&parts, &base, p));
    }
    ranges.retain(|r| !r.is_empty());
    ranges.sort_unstable_by_key(|r| r.start);
    // Every directory of `base` that holds something: as it is, unless merged again.
    let mut seed: Vec<u32> = base.iter().map(Node::dir).collect();
    seed.sort_unstable();
    seed.dedup();
    // The affected nodes out of `base` (which closes up), and merged with the new ones.
    let mut subset = new;
    let (mut w, mut from) = (0, 0);
    for r in ranges {
        let r = r.start.max(from)..r.end.max(from);
        base.copy_within(from..r.start, w);
        w += r.start - from;
        subset.extend_from_slice(&base[r.clone()]);
        from = r.end;
    }
    base.copy_within(from.., w);
    base.truncate(w + base.len() - from);
    let kept = base.len();
    let (p2, out, implicit_dirs) = merge_nodes(
        std::mem::take(&mut parts),
        subset,
        marks,
        (prefix, reference),
        Some(&seed),
        notes,
    )?;
    parts = p2;
    drop(seed);
    // Spliced in, from the back: each merged node after the kept ones that sort after it.
    let (m, k) = (base.len(), out.len());
    base.reserve_exact(k);
    base.extend_from_slice(&out);
    let (mut i, mut w) = (m, m + k);
    for x in out.iter().rev() {
        let p = base[..i].partition_point(|n| parts.cmp(n, x).is_lt());
        base.copy_within(p..i, w - (i - p));
        w -= i - p;
        i = p;
        w -= 1;
        base[w] = *x;
    }
    log::debug!(
        "merged {k} entries onto {kept} from the layer cache in {:.3}s",
        t0.elapsed().as_secs_f64()
    );
    let mut t = Tree::from_parts(parts, base);
    t.implicit_dirs = implicit_dirs;
    Ok(t)
}

/// The nodes (sorted by path) strictly below the directory `p`.
fn subtree(parts: &Parts, nodes: &[Node], p: &str) -> std::ops::Range<usize> {
    let (lo, hi) = (format!("{p}/"), format!("{p}0"));
    let a = nodes.partition_point(|n| parts.cmp_str(n, &lo).is_lt());
    let b = a + nodes[a..].partition_point(|n| parts.cmp_str(n, &hi).is_lt());
    a..b
}

/// [`merge`]'s work, on parts and nodes. With `seed` (the directories of a cached lower tree
/// that the nodes do not replace, see [`onto`]), those directories are known to be in the
/// output already, with nothing hiding below them; any path the nodes do hold is decided again.
fn merge_nodes(
    mut parts: Parts,
    mut nodes: Vec<Node>,
    marks: &Marks,
    (prefix, reference): (&str, &str),
    seed: Option<&[u32]>,
    notes: &mut Vec<String>,
) -> Result<(Parts, Vec<Node>, bool)> {
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
    let rm = marks.relative_to(prefix);
    let rm = &*rm;
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
    if let Some(seed) = seed {
        dirs = vec![NONE; parts.dir_count()];
        for &d in seed {
            dirs[d as usize] = root_hide;
        }
    }
    // With a seed, a path decided here that is not a directory of the output must not keep
    // its seeded directory.
    let unseed = |dirs: &mut Vec<u64>, parts: &Parts, p: &str| {
        if seed.is_some() {
            if let Some(d) = parts.find_dir(p).filter(|&d| (d as usize) < dirs.len()) {
                dirs[d as usize] = NONE;
            }
        }
    };
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
        unseed(&mut dirs, &parts, &p);
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
    let implicit_dirs = !implicit.is_empty();
    if implicit_dirs {
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
    Ok((parts, nodes, implicit_dirs))
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
    /// Adds the layers `from..to` of `layers` to `ing` (each entry's position: its layer and
    /// its index in it).
    fn ingest(layers: &[Vec<I>], from: usize, to: usize, ing: &mut crate::image::layers::Ingest) {
        for (li, items) in layers.iter().enumerate().take(to).skip(from) {
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
    }

    /// The tree below `prefix` of these layers, and the notes.
    fn merged(prefix: &str, layers: &[Vec<I>]) -> Result<(Vec<Row>, Vec<String>)> {
        let mut ing = crate::image::layers::Ingest::new(prefix);
        ingest(layers, 0, layers.len(), &mut ing);
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

    /// One generated layer item, owned (see [`I`]).
    #[derive(Clone, Debug)]
    enum G {
        D(String),
        F(String, u8),
        L(String, String),
        S(String),
        Wh(String),
        Opq(String),
    }

    fn item() -> impl proptest::strategy::Strategy<Value = G> {
        use proptest::prelude::*;
        let path = "p(/[abc]{1,2}){0,3}";
        prop_oneof![
            4 => path.prop_map(G::D),
            6 => (path, 1u8..9).prop_map(|(p, h)| G::F(p, h)),
            1 => (path, path).prop_map(|(p, t)| G::L(p, t)),
            1 => path.prop_map(G::S),
            2 => path.prop_map(G::Wh),
            1 => path.prop_map(G::Opq),
        ]
    }

    /// Layer items as [`merged`] takes them (the strings leaked: tests only).
    fn leak(layers: &[Vec<G>]) -> Vec<Vec<I>> {
        let l = |s: &String| -> &'static str { Box::leak(s.clone().into_boxed_str()) };
        layers
            .iter()
            .map(|items| {
                items
                    .iter()
                    .map(|g| match g {
                        G::D(p) => I::D(l(p)),
                        G::F(p, h) => I::F(l(p), *h),
                        G::L(p, t) => I::L(l(p), l(t)),
                        G::S(p) => I::S(l(p)),
                        G::Wh(p) => I::Wh(l(p)),
                        G::Opq(p) => I::Opq(l(p)),
                    })
                    .collect()
            })
            .collect()
    }

    /// The tree below `prefix` of `layers[..split]` merged, written to its cache file and read
    /// back, with the layers above merged onto it ([`onto`]); `None` when the lower merge fails
    /// or reports something (such a tree is not cached).
    /// (`whole`: as one merge of the cached tree's nodes and the new ones, as for large layers.)
    fn merged_onto(
        prefix: &str,
        layers: &[Vec<I>],
        split: usize,
        whole: bool,
    ) -> Option<Result<(Vec<Row>, Vec<String>)>> {
        let mut ing = crate::image::layers::Ingest::new(prefix);
        ingest(layers, 0, split, &mut ing);
        let mut notes = Vec::new();
        let lower = merge(ing.parts, ing.nodes, &ing.marks, prefix, "img", &mut notes).ok()?;
        if !notes.is_empty() || lower.implicit_dirs {
            return None;
        }
        let mut file = Vec::new();
        crate::image::tree::file::write(&lower, &mut file).unwrap();
        let lower = crate::image::tree::file::read(&file[..], file.len() as u64).unwrap();
        let (parts, base) = lower.into_parts();
        let mut ing = crate::image::layers::Ingest::new(prefix);
        ing.parts = parts;
        ingest(layers, split, layers.len(), &mut ing);
        let t = if whole {
            let mut all = base;
            all.extend(ing.nodes);
            merge(ing.parts, all, &ing.marks, prefix, "img", &mut notes)
        } else {
            onto(
                ing.parts,
                base,
                ing.nodes,
                &ing.marks,
                (prefix, "img"),
                &mut notes,
            )
        };
        let t = match t {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let list = (0..t.len())
            .map(|i| {
                let e = t.entry(i);
                (
                    t.path(i),
                    e.kind.letter(),
                    e.hash.map_or(0, |h| h[0]),
                    t.pos(i),
                )
            })
            .collect();
        Some(Ok((list, notes)))
    }

    #[test]
    fn layers_onto_a_cached_tree_cases() {
        use I::*;
        let lower = vec![
            D("p"),
            F("p/f", 1),
            D("p/d"),
            F("p/d/x", 2),
            D("p/d/e"),
            F("p/d/e/y", 3),
            D("p/o"),
            F("p/o/z", 4),
            D("p/w"),
            D("p/w/v"),
            F("p/w/v/u", 5),
            F("p/keep", 6),
        ];
        let uppers = [
            vec![F("p/f/under", 7)],          // below a cached file: dropped, reported
            vec![F("p/d/e/new", 8)],          // a new file deep in cached directories
            vec![F("p/d", 9)],                // a file over a cached directory
            vec![Wh("p/w/v")],                // a whiteout: its directory goes, the parent stays
            vec![Opq("p/o"), F("p/o/n", 10)], // an opaque directory
            vec![L("p/h", "p/keep")],         // a hard link to a cached file
            vec![Wh("p/w"), D("p/w"), F("p/w/again", 11)],
            vec![F("p/q/r/s", 12)], // new directories, not in any layer
        ];
        for (k, upper) in uppers.into_iter().enumerate() {
            let layers = vec![
                lower
                    .iter()
                    .map(|i| match *i {
                        D(p) => D(p),
                        F(p, h) => F(p, h),
                        _ => unreachable!(),
                    })
                    .collect::<Vec<_>>(),
                upper,
            ];
            for prefix in ["", "p"] {
                for whole in [false, true] {
                    let got =
                        merged_onto(prefix, &layers, 1, whole).expect("the lower tree is cached");
                    let want = merged(prefix, &layers);
                    assert_eq!(
                        got.map_err(|e| e.to_string()),
                        want.map_err(|e| e.to_string()),
                        "case {k}, prefix {prefix:?}, whole {whole}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Layers merged onto the cached tree of the layers below them give the tree, and the
        /// reports, that merging all the layers gives.
        #[test]
        fn layers_onto_a_cached_tree_merge_as_all_of_them(
            layers in proptest::collection::vec(proptest::collection::vec(item(), 0..10), 2..5),
            split in 1usize..4,
            at_root in proptest::bool::ANY,
            whole in proptest::bool::ANY,
        ) {
            let split = split.min(layers.len() - 1);
            let layers = leak(&layers);
            let prefix = if at_root { "" } else { "p" };
            if let Some(got) = merged_onto(prefix, &layers, split, whole) {
                let want = merged(prefix, &layers);
                match (got, want) {
                    (Ok(g), Ok(w)) => proptest::prop_assert_eq!(g, w),
                    (Err(_), Err(_)) => {}
                    (g, w) => proptest::prop_assert!(false, "onto {:?}, all {:?}", g.map(|x| x.0), w.map(|x| x.0)),
                }
            }
        }
    }
}
