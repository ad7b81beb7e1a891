//! The code tree of an image: every entry below `image.path`, sorted by path (byte order, the
//! order the manifest is written in), each with where its content is in the image. One tree is
//! held per run, and at a million entries it is most of the run's memory, so it is kept compact
//! and is addressed by index: the engine refers to entries by their index, never by a copy of
//! the path. What is not of fixed size lives in [`Parts`]: all paths in one `String` arena (for
//! layered images, each path relative to `image.path` is stored once as the layers are read,
//! and nodes that lost to a later layer leave their bytes there), the BLAKE3 hashes in a side
//! table (only files that have one take its 32 bytes), symlink and hard-link targets in a side
//! arena. A node is 40 bytes: the offset and length of its path, the mode, kind and which side
//! data it has packed in 16 bits, its position, size, mtime and the index of its side data. An
//! arena past 4 GiB, a path past 64 KiB or a mode with more than the permission bits is refused
//! with an error. It is plain data: it must never read the disk or an image.

use super::{Entry, Kind};
use anyhow::{bail, Result};

/// One entry of the tree, packed: its path (`Parts::paths[off..off + len]`), where its content
/// is (`pos`), and the [`Entry`] (read it with [`Parts::entry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub(super) off: u32,
    pub(super) len: u16,
    /// Permission bits (12), kind (2), has a hash, has a target.
    bits: u16,
    pub(super) pos: u64,
    size: u64,
    mtime: i64,
    nsec: u32,
    /// The index of the hash in `Parts::hashes` (a file with one), or the offset of the target
    /// in `Parts::targets` (a symlink, or a hard link waiting for its target).
    side: u32,
}

const MODE: u16 = 0o7777;
const KIND_SHIFT: u32 = 12;
const HAS_HASH: u16 = 1 << 14;
const HAS_TARGET: u16 = 1 << 15;

impl Node {
    pub(super) fn kind(&self) -> Kind {
        match (self.bits >> KIND_SHIFT) & 3 {
            0 => Kind::Dir,
            1 => Kind::File,
            _ => Kind::Symlink,
        }
    }

    pub(super) fn has_hash(&self) -> bool {
        self.bits & HAS_HASH != 0
    }

    pub(super) fn has_target(&self) -> bool {
        self.bits & HAS_TARGET != 0
    }

    pub(super) fn mtime(&self) -> i64 {
        self.mtime
    }

    /// A directory (mode 0755, mtime 0, no side data) at a path already in the arena.
    pub(super) fn dir_0755(off: u32, len: u16) -> Node {
        Node {
            off,
            len,
            bits: 0o755,
            pos: 0,
            size: 0,
            mtime: 0,
            nsec: 0,
            side: 0,
        }
    }
}

/// What the nodes point into: paths, hashes, targets (see the module's comment).
#[derive(Clone, Debug, Default)]
pub(super) struct Parts {
    pub(super) paths: String,
    hashes: Vec<[u8; 32]>,
    /// Each target: a little-endian u32 length, then its UTF-8 bytes.
    targets: Vec<u8>,
}

/// Appends `s` to the arena; its (offset, length), or an error when the arena would pass u32
/// or the path 64 KiB.
pub(super) fn intern(arena: &mut String, s: &str) -> Result<(u32, u16)> {
    let off = arena.len();
    let end = off + s.len();
    check_arena(end)?;
    let Ok(len) = u16::try_from(s.len()) else {
        bail!(
            "the image has a path of {} bytes ({:?}...), past the 64 KiB a path of the tree may \
             have; check the image (image.path)",
            s.len(),
            s.chars().take(80).collect::<String>()
        );
    };
    arena.push_str(s);
    Ok((off as u32, len))
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

impl Parts {
    /// The node of `e` at `path` (appended to the paths), with its position: the one way an
    /// entry becomes a node.
    pub(super) fn node(&mut self, path: &str, e: &Entry, pos: u64) -> Result<Node> {
        let (off, len) = intern(&mut self.paths, path)?;
        let mut n = Node {
            off,
            len,
            bits: 0,
            pos,
            size: 0,
            mtime: 0,
            nsec: 0,
            side: 0,
        };
        self.set_entry(&mut n, e)?;
        Ok(n)
    }

    /// The path of `n`.
    pub(super) fn path(&self, n: &Node) -> &str {
        &self.paths[n.off as usize..n.off as usize + n.len as usize]
    }

    pub(super) fn hash(&self, n: &Node) -> Option<&[u8; 32]> {
        n.has_hash().then(|| &self.hashes[n.side as usize])
    }

    pub(super) fn target(&self, n: &Node) -> Option<&str> {
        n.has_target().then(|| {
            let o = n.side as usize;
            let l = u32::from_le_bytes(self.targets[o..o + 4].try_into().unwrap()) as usize;
            // Only ever written from a `str` (in `set_entry`).
            std::str::from_utf8(&self.targets[o + 4..o + 4 + l]).unwrap_or_default()
        })
    }

    /// The entry of `n`, by value.
    pub(super) fn entry(&self, n: &Node) -> Entry {
        Entry {
            kind: n.kind(),
            mode: u32::from(n.bits & MODE),
            size: n.size,
            mtime: n.mtime,
            mtime_nsec: n.nsec,
            hash: self.hash(n).copied(),
            target: self.target(n).map(str::to_string),
        }
    }

    /// Gives `n` the entry `e` (its path and position stay). A hash replaces the node's own in
    /// place; a new target is appended (the old one's bytes stay unused).
    pub(super) fn set_entry(&mut self, n: &mut Node, e: &Entry) -> Result<()> {
        if e.mode & !u32::from(MODE) != 0 {
            bail!(
                "the mode {:o} of an image entry has more than the permission bits",
                e.mode
            );
        }
        if e.hash.is_some() && e.target.is_some() {
            bail!("an image entry with both a hash and a target");
        }
        let kind = match e.kind {
            Kind::Dir => 0,
            Kind::File => 1,
            Kind::Symlink => 2,
        };
        let (old_hash, old_side) = (n.has_hash().then_some(n.side), n.side);
        let same_target = e.target.is_some() && self.target(n) == e.target.as_deref();
        n.bits = e.mode as u16 | (kind << KIND_SHIFT);
        n.size = e.size;
        n.mtime = e.mtime;
        n.nsec = e.mtime_nsec;
        n.side = 0;
        if let Some(h) = e.hash {
            n.side = match old_hash {
                Some(i) => {
                    self.hashes[i as usize] = h;
                    i
                }
                None => {
                    let Ok(i) = u32::try_from(self.hashes.len()) else {
                        bail!("more than 4 billion files with a hash in one image tree");
                    };
                    self.hashes.push(h);
                    i
                }
            };
            n.bits |= HAS_HASH;
        } else if same_target {
            n.side = old_side;
            n.bits |= HAS_TARGET;
        } else if let Some(t) = &e.target {
            let off = self.targets.len();
            check_arena(off + 4 + t.len())?;
            self.targets
                .extend_from_slice(&u32::try_from(t.len())?.to_le_bytes());
            self.targets.extend_from_slice(t.as_bytes());
            n.side = off as u32;
            n.bits |= HAS_TARGET;
        }
        Ok(())
    }

    /// Gives the file `n` this hash (its other fields stay).
    pub(super) fn set_hash(&mut self, n: &mut Node, h: [u8; 32]) -> Result<()> {
        if n.has_hash() {
            self.hashes[n.side as usize] = h;
            return Ok(());
        }
        let Ok(i) = u32::try_from(self.hashes.len()) else {
            bail!("more than 4 billion files with a hash in one image tree");
        };
        self.hashes.push(h);
        n.side = i;
        n.bits = (n.bits & !HAS_TARGET) | HAS_HASH;
        Ok(())
    }

    /// Copies `n` (a node of `from`) into these parts: its path, hash and target.
    pub(super) fn adopt(&mut self, from: &Parts, n: &Node) -> Result<Node> {
        let mut m = self.node(from.path(n), &from.entry(n), n.pos)?;
        m.pos = n.pos;
        Ok(m)
    }

    /// How far the parts go now, for [`Parts::truncate`].
    pub(super) fn mark(&self) -> (usize, usize, usize) {
        (self.paths.len(), self.hashes.len(), self.targets.len())
    }

    /// Drops what was added since `mark` (nodes made since then must go too).
    pub(super) fn truncate(&mut self, (p, h, t): (usize, usize, usize)) {
        self.paths.truncate(p);
        self.hashes.truncate(h);
        self.targets.truncate(t);
    }

    /// Drops the paths, hashes and targets of `nodes`, which must be the last ones made.
    pub(super) fn truncate_before(&mut self, nodes: &[Node]) {
        let mut m = self.mark();
        for n in nodes {
            m.0 = m.0.min(n.off as usize);
            if n.has_hash() {
                m.1 = m.1.min(n.side as usize);
            }
            if n.has_target() {
                m.2 = m.2.min(n.side as usize);
            }
        }
        self.truncate(m);
    }

    pub(super) fn shrink_to_fit(&mut self) {
        self.paths.shrink_to_fit();
        self.hashes.shrink_to_fit();
        self.targets.shrink_to_fit();
    }

    /// Bytes held: (paths, hashes and targets).
    fn heap_bytes(&self) -> (usize, usize) {
        (
            self.paths.capacity(),
            self.hashes.capacity() * 32 + self.targets.capacity(),
        )
    }
}

/// The code tree: sorted, unique relative paths (`/`-separated, no leading `/`), parents first.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    parts: Parts,
    nodes: Vec<Node>,
}

impl Tree {
    /// Builds a tree from entries sorted by path with no duplicates; the `u64` is where the
    /// content is (layered images: layer and tar index; 0 elsewhere). (The sources build their
    /// trees from parts and nodes, with [`Tree::from_parts`]; this is for the tests.)
    #[cfg(test)]
    pub(super) fn from_sorted(nodes: Vec<(String, Entry, u64)>) -> Result<Tree> {
        debug_assert!(nodes.windows(2).all(|w| w[0].0 < w[1].0));
        let mut t = Tree::default();
        for (p, entry, pos) in nodes {
            let n = t.parts.node(&p, &entry, pos)?;
            t.nodes.push(n);
        }
        Ok(t)
    }

    /// A tree from its parts: `nodes` sorted by their path in `parts`, unique.
    pub(super) fn from_parts(parts: Parts, nodes: Vec<Node>) -> Tree {
        let t = Tree { parts, nodes };
        debug_assert!((1..t.nodes.len()).all(|i| t.path(i - 1) < t.path(i)));
        t
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The path of entry `i`.
    pub fn path(&self, i: usize) -> &str {
        self.parts.path(&self.nodes[i])
    }

    /// The entry `i`, by value (the tree keeps it packed).
    pub fn entry(&self, i: usize) -> Entry {
        self.parts.entry(&self.nodes[i])
    }

    /// The kind of entry `i` (without unpacking the rest).
    pub fn kind(&self, i: usize) -> Kind {
        self.nodes[i].kind()
    }

    /// The hash of entry `i`, if it has one.
    pub fn hash(&self, i: usize) -> Option<[u8; 32]> {
        self.parts.hash(&self.nodes[i]).copied()
    }

    /// Gives entry `i` the entry `e` (its path stays). Errors only on an entry the tree cannot
    /// hold (see the module's comment), which no source produces.
    pub fn set_entry(&mut self, i: usize, e: &Entry) -> Result<()> {
        let mut n = self.nodes[i];
        self.parts.set_entry(&mut n, e)?;
        self.nodes[i] = n;
        Ok(())
    }

    /// Gives the file `i` its content's hash.
    pub fn set_hash(&mut self, i: usize, h: [u8; 32]) -> Result<()> {
        let mut n = self.nodes[i];
        self.parts.set_hash(&mut n, h)?;
        self.nodes[i] = n;
        Ok(())
    }

    /// Where the content of entry `i` is (see [`Tree::from_sorted`]).
    pub(super) fn pos(&self, i: usize) -> u64 {
        self.nodes[i].pos
    }

    /// The index of `p`, if it is in the tree.
    pub fn find(&self, p: &str) -> Option<usize> {
        self.nodes
            .binary_search_by(|n| self.parts.path(n).cmp(p))
            .ok()
    }

    pub fn get(&self, p: &str) -> Option<Entry> {
        self.find(p).map(|i| self.entry(i))
    }

    pub fn contains_key(&self, p: &str) -> bool {
        self.find(p).is_some()
    }

    /// `(path, entry)` in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Entry)> + '_ {
        self.nodes
            .iter()
            .map(|n| (self.parts.path(n), self.parts.entry(n)))
    }

    /// Bytes held: (paths, nodes, hashes and targets), for the memory figures in the debug log.
    pub fn heap_bytes(&self) -> (usize, usize, usize) {
        let (paths, side) = self.parts.heap_bytes();
        (
            paths,
            self.nodes.capacity() * std::mem::size_of::<Node>(),
            side,
        )
    }

    /// Says in the debug log how large the tree is (`sync -v` prints it beside each phase's
    /// peak memory), whichever source built it.
    pub fn log_size(&self) {
        let (paths, nodes, side) = self.heap_bytes();
        log::debug!(
            "the image tree: {} entries, {} MiB of paths, {} MiB of nodes, {} MiB of hashes and targets",
            self.len(),
            paths >> 20,
            nodes >> 20,
            side >> 20
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
        assert_eq!(std::mem::size_of::<Node>(), 40);
    }

    #[test]
    fn entries_round_trip_through_the_packed_node() {
        let entries = [
            Entry {
                kind: Kind::Dir,
                mode: 0o7777,
                size: 0,
                mtime: i64::MIN,
                mtime_nsec: 999_999_999,
                hash: None,
                target: None,
            },
            Entry {
                kind: Kind::File,
                mode: 0o1755,
                size: u64::MAX,
                mtime: i64::MAX,
                mtime_nsec: 1,
                hash: Some([0xab; 32]),
                target: None,
            },
            Entry {
                kind: Kind::File,
                mode: 0,
                size: 0,
                mtime: -1,
                mtime_nsec: 0,
                hash: None,
                target: Some("a/hard/link".into()),
            },
            Entry {
                kind: Kind::Symlink,
                mode: 0o777,
                size: 0,
                mtime: 1_700_000_000,
                mtime_nsec: 5,
                hash: None,
                target: Some("../ü\n/x".into()),
            },
            Entry {
                kind: Kind::Symlink,
                mode: 0o777,
                size: 0,
                mtime: 0,
                mtime_nsec: 0,
                hash: None,
                target: Some(String::new()),
            },
            e(),
        ];
        let rows: Vec<(String, Entry, u64)> = entries
            .iter()
            .enumerate()
            .map(|(k, x)| (format!("p{k}"), x.clone(), (k as u64) << 40 | 7))
            .collect();
        let mut t = Tree::from_sorted(rows.clone()).unwrap();
        let back: Vec<(String, Entry, u64)> = (0..t.len())
            .map(|i| (t.path(i).to_string(), t.entry(i), t.pos(i)))
            .collect();
        assert_eq!(back, rows);
        assert_eq!(t.kind(3), Kind::Symlink);
        assert_eq!(t.hash(1), Some([0xab; 32]));
        // A file hashed later: the hash goes into the side table, a second one replaces it.
        t.set_hash(5, [1; 32]).unwrap();
        t.set_hash(5, [2; 32]).unwrap();
        assert_eq!(
            t.entry(5),
            Entry {
                hash: Some([2; 32]),
                ..e()
            }
        );
        assert_eq!(
            t.entry(1).hash,
            Some([0xab; 32]),
            "another file's hash stayed"
        );
        // A whole entry replaced: a symlink becomes a file and back.
        t.set_entry(3, &entries[1]).unwrap();
        assert_eq!(t.entry(3), entries[1]);
        t.set_entry(3, &entries[3]).unwrap();
        assert_eq!(t.entry(3), entries[3]);
        assert_eq!(t.path(3), "p3");
    }

    #[test]
    fn what_a_node_cannot_hold_is_refused() {
        let mut p = Parts::default();
        let bad_mode = Entry {
            mode: 0o10644,
            ..e()
        };
        assert!(p.node("x", &bad_mode, 0).is_err());
        let both = Entry {
            hash: Some([0; 32]),
            target: Some("t".into()),
            ..e()
        };
        assert!(p.node("x", &both, 0).is_err());
        let long = "a/".repeat(40_000);
        let err = p.node(&long, &e(), 0).unwrap_err().to_string();
        assert!(err.contains("past the 64 KiB"), "{err}");
        assert!(p.node(&"a".repeat(65_535), &e(), 0).is_ok());
        assert!(check_arena(u32::MAX as usize).is_ok());
        assert!(check_arena(u32::MAX as usize + 1).is_err());
    }
}
