//! The merge of a layered image's entries into its code tree: every layer's entries (under
//! `image.path` and on the way to it) are in one path arena and one node vector, each node
//! carrying its position (layer, tar index), which is also its sequence. One sort by (path,
//! sequence); hard links resolved against what was visible when they were read; then one pass
//! keeps the last entry of each path unless a whiteout or opaque marker of a higher layer, or a
//! non-directory of a higher sequence at an ancestor, hides it (as applying the layers one by one
//! would), checks that `image.path` is a directory all the way down, drops (with a note) what is
//! below a file or symlink, and adds missing directories (0755). It works on data only: it must
//! never read the disk, and never keep a path outside `image.path` in the tree.

use super::layers::decode_pos;
use super::tree::Node;
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
fn is_link(e: &Entry) -> bool {
    e.kind == Kind::File && e.target.is_some()
}

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

/// The code tree below `prefix` of the layers' nodes (see the module's comment).
pub(super) fn merge(
    mut arena: String,
    mut nodes: Vec<Node>,
    marks: &Marks,
    prefix: &str,
    reference: &str,
    under: &dyn Fn(&str) -> bool,
    notes: &mut Vec<String>,
) -> Result<Tree> {
    arena.shrink_to_fit();
    let s = |n: &Node| &arena[n.off as usize..(n.off + n.len) as usize];
    nodes.sort_unstable_by(|a, b| s(a).cmp(s(b)).then(a.pos.cmp(&b.pos)));
    // Where a resolved hard link's content is (by the link's sequence).
    let content = resolve_links(&arena, &mut nodes, marks, under, notes);
    // The tree root must be a real directory all the way down in the image; what a
    // non-directory on the way to it hid stays hidden.
    let run = |nodes: &[Node], p: &str| {
        let lo = nodes.partition_point(|n| s(n) < p);
        let hi = lo + nodes[lo..].partition_point(|n| s(n) == p);
        lo..hi
    };
    let mut root_hide = 0u64;
    if !prefix.is_empty() {
        let mut end = 0;
        for c in prefix.split('/') {
            end += c.len() + usize::from(end > 0);
            let acc = &prefix[..end];
            let r = run(&nodes, acc);
            for n in &nodes[r.clone()] {
                if n.entry.kind != Kind::Dir {
                    root_hide = root_hide.max(n.pos);
                }
            }
            if let Some(w) = nodes[r].last() {
                let hidden = marks.hides(acc, decode_pos(w.pos).0, usize::MAX) || root_hide > w.pos;
                if !hidden && w.entry.kind != Kind::Dir {
                    bail!(
                        "in the image {}, /{acc} is not a directory (a {}); image.path must be a directory of the image",
                        reference,
                        if w.entry.kind == Kind::Symlink { "symlink" } else { "file" }
                    );
                }
            }
        }
    }
    let start = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let lo = nodes.partition_point(|n| s(n) < start.as_str());
    let hi = lo + nodes[lo..].partition_point(|n| s(n).starts_with(&start));
    let cut = start.len() as u32;
    // Directories of the output (relative path -> the highest sequence of a non-directory at
    // it or an ancestor: what is older is hidden below it).
    let mut dirs: HashMap<&str, u64> = HashMap::new();
    let mut implicit: Vec<Node> = Vec::new();
    let mut w = 0;
    let mut r = lo;
    while r < hi {
        let p = s(&nodes[r]);
        let mut end = r + 1;
        let mut nondir = 0;
        if nodes[r].entry.kind != Kind::Dir {
            nondir = nodes[r].pos;
        }
        while end < hi && s(&nodes[end]) == p {
            if nodes[end].entry.kind != Kind::Dir {
                nondir = nondir.max(nodes[end].pos);
            }
            end += 1;
        }
        let win = end - 1;
        r = end;
        let seq = nodes[win].pos;
        if marks.hides(p, decode_pos(seq).0, usize::MAX) {
            continue;
        }
        let rel = &p[start.len()..];
        // The nearest ancestor in the output, and the ones missing on the way to it.
        let mut missing: Vec<&str> = Vec::new();
        let mut anc = rel;
        let parent = loop {
            let Some(i) = anc.rfind('/') else {
                break Ok(root_hide);
            };
            anc = &anc[..i];
            if let Some(&h) = dirs.get(anc) {
                break Ok(h);
            }
            let found = nodes[..w]
                .binary_search_by(|n| arena[n.off as usize..(n.off + n.len) as usize].cmp(anc));
            if let Ok(j) = found {
                break Err(nodes[j].pos);
            }
            missing.push(anc);
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
        for m in missing {
            let off = m.as_ptr() as usize - arena.as_ptr() as usize;
            implicit.push(Node {
                off: off as u32,
                len: m.len() as u32,
                pos: 0,
                entry: dir_0755(),
            });
            dirs.insert(m, hide);
        }
        if nodes[win].entry.kind == Kind::Dir {
            dirs.insert(rel, hide.max(nondir));
        }
        nodes.swap(w, win);
        nodes[w].off += cut;
        nodes[w].len -= cut;
        w += 1;
    }
    drop(dirs);
    nodes.truncate(w);
    if !implicit.is_empty() {
        nodes.append(&mut implicit);
        nodes.sort_unstable_by(|a, b| s(a).cmp(s(b)));
    }
    if !content.is_empty() {
        for n in &mut nodes {
            if let Some(&c) = content.get(&n.pos) {
                n.pos = c;
            }
        }
    }
    nodes.shrink_to_fit();
    Ok(Tree::from_parts(arena, nodes))
}

/// Resolves each hard link (in the order they were read) to the entry at its target that was
/// visible when it was read (same layer before it, or lower, not hidden since), which must be a
/// file of the tree. The link becomes a copy of that file (its own mtime); links that do not
/// resolve are dropped with a note. Returns link sequence -> content position.
fn resolve_links(
    arena: &str,
    nodes: &mut Vec<Node>,
    marks: &Marks,
    under: &dyn Fn(&str) -> bool,
    notes: &mut Vec<String>,
) -> HashMap<u64, u64> {
    let s = |n: &Node| &arena[n.off as usize..(n.off + n.len) as usize];
    let mut links: Vec<(u64, usize)> = (0..nodes.len())
        .filter(|&i| is_link(&nodes[i].entry))
        .map(|i| (nodes[i].pos, i))
        .collect();
    let mut content = HashMap::new();
    if links.is_empty() {
        return content;
    }
    links.sort_unstable();
    let run = |nodes: &[Node], p: &str| {
        let lo = nodes.partition_point(|n| s(n) < p);
        let hi = lo + nodes[lo..].partition_point(|n| s(n) == p);
        lo..hi
    };
    let mut dead = false;
    for (seq, i) in links {
        let t = nodes[i].entry.target.clone().unwrap_or_default();
        let path = s(&nodes[i]);
        let layer = decode_pos(seq).0;
        let src = nodes[run(nodes, &t)]
            .iter()
            .rfind(|n| n.pos < seq)
            .filter(|c| {
                let cl = decode_pos(c.pos).0;
                if marks.hides(&t, cl, layer) {
                    return false;
                }
                // A non-directory put at an ancestor since then removed it.
                let mut a = t.as_str();
                while let Some(k) = a.rfind('/') {
                    a = &a[..k];
                    if nodes[run(nodes, a)]
                        .iter()
                        .any(|n| n.entry.kind != Kind::Dir && c.pos < n.pos && n.pos < seq)
                    {
                        return false;
                    }
                }
                true
            })
            .filter(|c| {
                c.entry.kind == Kind::File
                    && !is_link(&c.entry)
                    && (c.entry.hash.is_some() || !under(path))
            })
            .map(|c| (c.entry.clone(), *content.get(&c.pos).unwrap_or(&c.pos)));
        match src {
            Some((src, pos)) => {
                let mtime = nodes[i].entry.mtime;
                nodes[i].entry = Entry { mtime, ..src };
                content.insert(seq, pos);
            }
            None => {
                notes.push(format!(
                    "image: dropped the hard link {path:?}: its target is not a file of the tree"
                ));
                dead = true;
            }
        }
    }
    if dead {
        nodes.retain(|n| !is_link(&n.entry));
    }
    content
}
