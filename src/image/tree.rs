//! The code tree of an image: every entry below `image.path`, sorted by path (byte order, the
//! order the manifest is written in), each with where its content is in the image. One tree is
//! held per run, and at a million entries it is most of the run's memory, so it is kept compact
//! and is addressed by index: the engine refers to entries by their index, never by a copy of
//! the path. It is plain data: it must never read the disk or an image.

use super::Entry;

/// The code tree: sorted, unique relative paths (`/`-separated, no leading `/`), parents first.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    nodes: Vec<(String, Entry, u64)>,
}

impl Tree {
    /// Builds a tree from entries sorted by path with no duplicates; the `u64` is where the
    /// content is (layered images: layer and tar index; 0 elsewhere).
    pub(super) fn from_sorted(nodes: Vec<(String, Entry, u64)>) -> Tree {
        debug_assert!(nodes.windows(2).all(|w| w[0].0 < w[1].0));
        Tree { nodes }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The path of entry `i`.
    pub fn path(&self, i: usize) -> &str {
        &self.nodes[i].0
    }

    pub fn entry(&self, i: usize) -> &Entry {
        &self.nodes[i].1
    }

    pub fn entry_mut(&mut self, i: usize) -> &mut Entry {
        &mut self.nodes[i].1
    }

    /// Where the content of entry `i` is (see [`Tree::from_sorted`]).
    pub(super) fn pos(&self, i: usize) -> u64 {
        self.nodes[i].2
    }

    /// The index of `p`, if it is in the tree.
    pub fn find(&self, p: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.0.as_str().cmp(p)).ok()
    }

    pub fn get(&self, p: &str) -> Option<&Entry> {
        self.find(p).map(|i| self.entry(i))
    }

    pub fn contains_key(&self, p: &str) -> bool {
        self.find(p).is_some()
    }

    /// `(path, entry)` in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.nodes.iter().map(|n| (n.0.as_str(), &n.1))
    }
}
