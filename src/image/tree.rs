//! The code tree of an image: every entry below `image.path`, sorted by path (byte order, the
//! order the manifest is written in), each with where its content is in the image. One tree is
//! held per run, and at a million entries it is most of the run's memory, so it is kept compact
//! and is addressed by index: the engine refers to entries by their index, never by a copy of
//! the path. All paths live in one `String` arena (for layered images, each path relative to
//! `image.path` is stored once as the layers are read, and nodes that lost to a later layer
//! leave their bytes there); a node is the offset and length of its path (u32 each), the entry
//! and its position. An arena past 4 GiB is refused with an error. It is plain data: it must
//! never read the disk or an image.

use super::Entry;
use anyhow::{bail, Result};

/// One entry of the tree: its path (`arena[off..off + len]`), the entry, where its content is.
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub(super) off: u32,
    pub(super) len: u32,
    pub(super) pos: u64,
    pub(super) entry: Entry,
}

/// The code tree: sorted, unique relative paths (`/`-separated, no leading `/`), parents first.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    arena: String,
    nodes: Vec<Node>,
}

/// Appends `s` to the arena; its (offset, length), or an error when the arena would pass u32.
pub(super) fn intern(arena: &mut String, s: &str) -> Result<(u32, u32)> {
    let off = arena.len();
    let end = off + s.len();
    check_arena(end)?;
    arena.push_str(s);
    Ok((off as u32, s.len() as u32))
}

/// An error when an arena of `end` bytes could not be addressed by a node's u32 offset.
pub(super) fn check_arena(end: usize) -> Result<()> {
    if end > u32::MAX as usize {
        bail!(
            "the image tree's paths pass 4 GiB ({} bytes so far): too many or too long paths for \
             one tree; check the image (image.path) or lower image.max_layer_entries",
            end
        );
    }
    Ok(())
}

impl Tree {
    /// Builds a tree from entries sorted by path with no duplicates; the `u64` is where the
    /// content is (layered images: layer and tar index; 0 elsewhere). (The sources build their
    /// trees from an arena and nodes, with [`Tree::from_parts`]; this is for the tests.)
    #[cfg(test)]
    pub(super) fn from_sorted(nodes: Vec<(String, Entry, u64)>) -> Result<Tree> {
        debug_assert!(nodes.windows(2).all(|w| w[0].0 < w[1].0));
        let mut t = Tree {
            arena: String::with_capacity(nodes.iter().map(|n| n.0.len()).sum()),
            nodes: Vec::with_capacity(nodes.len()),
        };
        for (p, entry, pos) in nodes {
            let (off, len) = intern(&mut t.arena, &p)?;
            t.nodes.push(Node {
                off,
                len,
                pos,
                entry,
            });
        }
        Ok(t)
    }

    /// A tree from its parts: `nodes` sorted by their path in `arena`, unique.
    pub(super) fn from_parts(arena: String, nodes: Vec<Node>) -> Tree {
        let t = Tree { arena, nodes };
        debug_assert!((1..t.nodes.len()).all(|i| t.path(i - 1) < t.path(i)));
        t
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn str_of(&self, n: &Node) -> &str {
        &self.arena[n.off as usize..(n.off + n.len) as usize]
    }

    /// The path of entry `i`.
    pub fn path(&self, i: usize) -> &str {
        self.str_of(&self.nodes[i])
    }

    pub fn entry(&self, i: usize) -> &Entry {
        &self.nodes[i].entry
    }

    pub fn entry_mut(&mut self, i: usize) -> &mut Entry {
        &mut self.nodes[i].entry
    }

    /// Where the content of entry `i` is (see [`Tree::from_sorted`]).
    pub(super) fn pos(&self, i: usize) -> u64 {
        self.nodes[i].pos
    }

    /// The index of `p`, if it is in the tree.
    pub fn find(&self, p: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| self.str_of(n).cmp(p)).ok()
    }

    pub fn get(&self, p: &str) -> Option<&Entry> {
        self.find(p).map(|i| self.entry(i))
    }

    pub fn contains_key(&self, p: &str) -> bool {
        self.find(p).is_some()
    }

    /// `(path, entry)` in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.nodes.iter().map(|n| (self.str_of(n), &n.entry))
    }

    /// Bytes held: (path arena, nodes), for the memory figures in the debug log.
    pub fn heap_bytes(&self) -> (usize, usize) {
        (
            self.arena.capacity(),
            self.nodes.capacity() * std::mem::size_of::<Node>(),
        )
    }

    /// Says in the debug log how large the tree is (`sync -v` prints it beside each phase's
    /// peak memory), whichever source built it.
    pub fn log_size(&self) {
        let (paths, nodes) = self.heap_bytes();
        log::debug!(
            "the image tree: {} entries, {} MiB of paths, {} MiB of nodes",
            self.len(),
            paths >> 20,
            nodes >> 20
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Kind;

    fn e() -> Entry {
        Entry {
            kind: Kind::File,
            mode: 0o644,
            size: 1,
            mtime: 0,
            mtime_nsec: 0,
            hash: None,
            target: None,
        }
    }

    #[test]
    fn finds_by_path_in_byte_order() {
        let t = Tree::from_sorted(vec![
            ("a".into(), e(), 1),
            ("a-b".into(), e(), 2),
            ("a/b".into(), e(), 3),
        ])
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.find("a/b"), Some(2));
        assert_eq!(t.pos(1), 2);
        assert_eq!(t.path(1), "a-b");
        assert!(t.find("a/c").is_none());
        let v: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(v, ["a", "a-b", "a/b"]);
    }

    #[test]
    fn a_node_stays_small() {
        // The entry (about 88 bytes) plus offset, length and position.
        assert!(
            std::mem::size_of::<Node>() <= 104,
            "{}",
            std::mem::size_of::<Node>()
        );
    }
}
