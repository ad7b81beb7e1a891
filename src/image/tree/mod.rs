//! The code tree of an image: every entry below `image.path`, sorted by path (byte order, the
//! order the manifest is written in), each with where its content is in the image. One tree is
//! held per run, and at a million entries it is most of the run's memory, so it is kept compact
//! and is addressed by index: the engine refers to entries by their index, never by a copy of
//! the path. What is not of fixed size lives in [`Parts`]: each directory's path once, in a
//! table of directories (an entry is its directory's index and its own name, so a path is
//! built on demand: [`Tree::path`]); the names and those directory paths in one `String` arena
//! (for layered images, nodes that lost to a later layer leave their bytes there); the BLAKE3
//! hashes in a side table (only files that have one take its 32 bytes); symlink and hard-link
//! targets in a side arena. A node is 44 bytes: its directory, the offset and length of its
//! name, the mode, kind and which side data it has packed in 16 bits, its position, size, mtime
//! and the index of its side data. An arena past 4 GiB, a name past 64 KiB or a mode with more
//! than the permission bits is refused with an error. It is plain data: it must never read the
//! disk or an image. Over 500 lines: the packing, the directory table and the path order are
//! one representation, and their tests (round trip, order against plain strings, limits) sit
//! with it.

use super::{Entry, Kind};
use anyhow::{bail, Result};

pub(super) mod file;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// One entry of the tree, packed: its path (the directory `dir` of [`Parts`], then its name
/// `Parts::text[off..off + len]`), where its content is (`pos`), and the [`Entry`] (read it
/// with [`Parts::entry`]). Aligned to 4 bytes, so that it is 44 bytes, not 48.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, packed(4))]
pub(super) struct Node {
    dir: u32,
    off: u32,
    len: u16,
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

    /// The index of the node's directory in the table.
    pub(super) fn dir(&self) -> u32 {
        self.dir
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

    /// A directory (mode 0755, mtime 0, no side data) with this parent and name.
    fn dir_0755(dir: u32, off: u32, len: u16) -> Node {
        Node {
            dir,
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

/// What the nodes point into: names, directories, hashes, targets (see the module's comment).
#[derive(Clone, Debug, Default)]
pub(super) struct Parts {
    /// Names and directory paths.
    text: String,
    /// The directories, by index; 0 is the root (the empty path). Each directory's parent is
    /// in the table too.
    dirs: Vec<Dir>,
    /// While entries are added: directory path hash -> index (a path whose hash another
    /// directory already has goes in `clashes`). Dropped by [`Parts::seal`].
    index: HashMap<u64, u32>,
    clashes: Vec<u32>,
    hasher: RandomState,
    /// The directory of the last node made.
    last: u32,
    hashes: Vec<[u8; 32]>,
    /// Each target: a little-endian u32 length, then its UTF-8 bytes.
    targets: Vec<u8>,
}

/// A directory: its name (`text[off..off + len]`), its parent's index and its depth (1 for a
/// directory at the top; the root is 0). Each directory's path is only ever built from these,
/// so a deep path costs its length, not its length times its depth.
#[derive(Clone, Copy, Debug)]
struct Dir {
    off: u32,
    len: u16,
    depth: u16,
    parent: u32,
}

/// One step on the way up a path: a name, its parent directory, its depth, and whether it is
/// a directory of the table (then its index) or the node itself.
#[derive(Clone, Copy)]
struct Step<'a> {
    name: &'a [u8],
    parent: u32,
    depth: u32,
    dir: Option<u32>,
}

/// Appends `s` to the arena; its (offset, length), or an error when the arena would pass u32
/// or the name 64 KiB.
fn intern(arena: &mut String, s: &str) -> Result<(u32, u16)> {
    let off = arena.len();
    let end = off + s.len();
    check_arena(end)?;
    let Ok(len) = u16::try_from(s.len()) else {
        bail!(
            "the image has a name of {} bytes ({:?}...), past the 64 KiB a name in the tree may \
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
    /// The node of `e` at `path` (its directory added to the table if new, its name to the
    /// arena), with its position: the one way an entry becomes a node.
    pub(super) fn node(&mut self, path: &str, e: &Entry, pos: u64) -> Result<Node> {
        let (parent, name) = match path.rfind('/') {
            Some(k) => (&path[..k], &path[k + 1..]),
            None => ("", path),
        };
        let dir = self.dir(parent)?;
        let (off, len) = intern(&mut self.text, name)?;
        let mut n = Node::dir_0755(dir, off, len);
        n.pos = pos;
        self.set_entry(&mut n, e)?;
        Ok(n)
    }

    fn name(&self, off: u32, len: u16) -> &str {
        &self.text[off as usize..off as usize + len as usize]
    }

    fn dir_step(&self, d: u32) -> Step<'_> {
        let x = self.dirs[d as usize];
        Step {
            name: self.name(x.off, x.len).as_bytes(),
            parent: x.parent,
            depth: u32::from(x.depth),
            dir: Some(d),
        }
    }

    fn node_step(&self, n: &Node) -> Step<'_> {
        let (dir, off, len) = (n.dir, n.off, n.len);
        Step {
            name: self.name(off, len).as_bytes(),
            parent: dir,
            depth: u32::from(self.dirs[dir as usize].depth) + 1,
            dir: None,
        }
    }

    /// The names on the way to `last` (root first) into `out` (cleared first).
    fn names<'a>(&'a self, last: Step<'a>, out: &mut Vec<&'a [u8]>) {
        out.clear();
        let mut x = last;
        loop {
            out.push(x.name);
            if x.depth <= 1 {
                break;
            }
            x = self.dir_step(x.parent);
        }
        out.reverse();
    }

    fn hash_of(&self, p: &str) -> u64 {
        self.hasher.hash_one(p)
    }

    /// Whether the directory `d` has the path `p`.
    fn dir_is(&self, d: u32, p: &str) -> bool {
        let mut names = Vec::new();
        if d == 0 {
            return p.is_empty();
        }
        self.names(self.dir_step(d), &mut names);
        let mut rest = p.as_bytes();
        for (k, c) in names.iter().enumerate() {
            if k > 0 {
                match rest.split_first() {
                    Some((b'/', r)) => rest = r,
                    _ => return false,
                }
            }
            match rest.strip_prefix(*c) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// The index of the directory `p`, if the table has it.
    pub(super) fn find_dir(&self, p: &str) -> Option<u32> {
        if p.is_empty() {
            return (!self.dirs.is_empty()).then_some(0);
        }
        let &d = self.index.get(&self.hash_of(p))?;
        if self.dir_is(d, p) {
            return Some(d);
        }
        self.clashes.iter().copied().find(|&d| self.dir_is(d, p))
    }

    /// The index of the directory `p`, added (with its ancestors) if new.
    fn dir(&mut self, p: &str) -> Result<u32> {
        if self.dirs.is_empty() {
            self.dirs.push(Dir {
                off: 0,
                len: 0,
                depth: 0,
                parent: 0,
            });
        }
        if p.is_empty() {
            return Ok(0);
        }
        // The common case: the same directory as the last entry's.
        if self.dir_is(self.last, p) {
            return Ok(self.last);
        }
        if let Some(d) = self.find_dir(p) {
            self.last = d;
            return Ok(d);
        }
        // The missing ones, deepest first, up to the nearest one the table has.
        let mut missing = vec![p];
        let mut a = p;
        let mut parent = loop {
            let Some(k) = a.rfind('/') else {
                break 0;
            };
            a = &a[..k];
            if let Some(d) = self.find_dir(a) {
                break d;
            }
            missing.push(a);
        };
        for m in missing.into_iter().rev() {
            let name = m.rfind('/').map_or(m, |k| &m[k + 1..]);
            let (off, len) = intern(&mut self.text, name)?;
            let Ok(d) = u32::try_from(self.dirs.len()) else {
                bail!("more than 4 billion directories in one image tree");
            };
            let Ok(depth) = u16::try_from(self.dirs[parent as usize].depth as usize + 1) else {
                bail!(
                    "the image has a path more than 65,535 directories deep ({:?}...); check \
                     the image (image.path)",
                    m.chars().take(80).collect::<String>()
                );
            };
            self.dirs.push(Dir {
                off,
                len,
                depth,
                parent,
            });
            let h = self.hash_of(m);
            match self.index.entry(h) {
                std::collections::hash_map::Entry::Occupied(_) => self.clashes.push(d),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(d);
                }
            }
            parent = d;
        }
        self.last = parent;
        Ok(parent)
    }

    /// The path of `n`, built.
    pub(super) fn path(&self, n: &Node) -> String {
        let mut s = String::new();
        self.path_into(n, &mut s);
        s
    }

    /// The path of `n`, built into `buf` (cleared first).
    pub(super) fn path_into<'b>(&self, n: &Node, buf: &'b mut String) -> &'b str {
        let mut names = Vec::new();
        self.names(self.node_step(n), &mut names);
        buf.clear();
        for (k, c) in names.iter().enumerate() {
            if k > 0 {
                buf.push('/');
            }
            // Each name is a whole UTF-8 string of the arena.
            buf.push_str(std::str::from_utf8(c).unwrap_or_default());
        }
        buf
    }

    /// The order of two nodes' paths (byte order of the whole paths), found by going up from
    /// both to their nearest common directory.
    pub(super) fn cmp(&self, a: &Node, b: &Node) -> Ordering {
        let (ad, bd) = (a.dir, b.dir);
        if ad == bd {
            return self.node_step(a).name.cmp(self.node_step(b).name);
        }
        let (mut x, mut y) = (self.node_step(a), self.node_step(b));
        // Whether the path goes on below x (y): x is a directory it was lifted to.
        let (mut xm, mut ym) = (false, false);
        while x.depth > y.depth {
            x = self.dir_step(x.parent);
            xm = true;
        }
        while y.depth > x.depth {
            y = self.dir_step(y.parent);
            ym = true;
        }
        while x.parent != y.parent {
            x = self.dir_step(x.parent);
            y = self.dir_step(y.parent);
            (xm, ym) = (true, true);
        }
        // Siblings: their names, then what follows each ('/' or the end).
        let k = x.name.len().min(y.name.len());
        match x.name[..k].cmp(&y.name[..k]) {
            Ordering::Equal => {}
            o => return o,
        }
        let next = |s: &Step, more: bool| -> Option<u8> {
            match s.name.get(k) {
                Some(&c) => Some(c),
                None => more.then_some(b'/'),
            }
        };
        let (nx, ny) = (next(&x, xm), next(&y, ym));
        debug_assert!(x.dir.is_none() || y.dir.is_none() || x.dir != y.dir);
        nx.cmp(&ny)
    }

    /// Whether two nodes have the same path.
    pub(super) fn same(&self, a: &Node, b: &Node) -> bool {
        let (ad, bd) = (a.dir, b.dir);
        ad == bd && self.node_step(a).name == self.node_step(b).name
    }

    /// The order of `n`'s path and `p`.
    pub(super) fn cmp_str(&self, n: &Node, p: &str) -> Ordering {
        let mut names = Vec::new();
        self.names(self.node_step(n), &mut names);
        let mut rest = p.as_bytes();
        for (k, c) in names.iter().enumerate() {
            if k > 0 {
                match rest.first() {
                    None => return Ordering::Greater,
                    Some(&b'/') => rest = &rest[1..],
                    Some(&b) => return b'/'.cmp(&b),
                }
            }
            let m = c.len().min(rest.len());
            match c[..m].cmp(&rest[..m]) {
                Ordering::Equal => {}
                o => return o,
            }
            if c.len() > rest.len() {
                return Ordering::Greater;
            }
            rest = &rest[c.len()..];
        }
        if rest.is_empty() {
            Ordering::Equal
        } else {
            Ordering::Less
        }
    }

    /// The directory `0755` node of the directory `d` of the table (not the root).
    pub(super) fn dir_node(&self, d: u32) -> Node {
        let x = self.dirs[d as usize];
        Node::dir_0755(x.parent, x.off, x.len)
    }

    /// Adding again, to a sealed table (a tree read from the layer cache, which new layers go
    /// on top of): the directory index back, each directory's path hashed once.
    fn unseal(&mut self) {
        let mut names = Vec::new();
        let mut path = Vec::new();
        let mut hashes = Vec::with_capacity(self.dirs.len());
        for d in 1..self.dirs.len() as u32 {
            self.names(self.dir_step(d), &mut names);
            path.clear();
            for (k, c) in names.iter().enumerate() {
                if k > 0 {
                    path.push(b'/');
                }
                path.extend_from_slice(c);
            }
            // Built from whole UTF-8 names of the arena.
            hashes.push((
                d,
                self.hash_of(std::str::from_utf8(&path).unwrap_or_default()),
            ));
        }
        for (d, h) in hashes {
            match self.index.entry(h) {
                std::collections::hash_map::Entry::Occupied(_) => self.clashes.push(d),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(d);
                }
            }
        }
    }

    /// How many directories the table has.
    pub(super) fn dir_count(&self) -> usize {
        self.dirs.len()
    }

    /// Done adding: the directory index goes (lookups of directories are over).
    pub(super) fn seal(&mut self) {
        self.index = HashMap::new();
        self.clashes = Vec::new();
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
        self.node(&from.path(n), &from.entry(n), n.pos)
    }

    /// How far the parts go now, for [`Parts::truncate`].
    pub(super) fn mark(&self) -> (usize, usize, usize) {
        (self.text.len(), self.hashes.len(), self.targets.len())
    }

    /// Drops what was added since `mark`, directories too (nodes made since then must go).
    pub(super) fn truncate(&mut self, (p, h, t): (usize, usize, usize)) {
        while self.dirs.len() > 1 && self.dirs[self.dirs.len() - 1].off as usize >= p {
            let d = self.dirs.len() as u32 - 1;
            let mut names = Vec::new();
            self.names(self.dir_step(d), &mut names);
            let path: Vec<&str> = names
                .iter()
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            let k = self.hash_of(&path.join("/"));
            if self.index.get(&k) == Some(&d) {
                self.index.remove(&k);
            }
            self.clashes.retain(|&c| c != d);
            self.dirs.pop();
        }
        self.last = 0;
        self.text.truncate(p);
        self.hashes.truncate(h);
        self.targets.truncate(t);
    }

    /// Drops the names, directories, hashes and targets of `nodes`, which must be the last
    /// ones made.
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
        // A directory added for one of them is after the first name of them in the arena.
        self.truncate(m);
    }

    pub(super) fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.dirs.shrink_to_fit();
        self.hashes.shrink_to_fit();
        self.targets.shrink_to_fit();
    }

    /// Bytes held: (names and directories, hashes and targets).
    fn heap_bytes(&self) -> (usize, usize) {
        (
            self.text.capacity() + self.dirs.capacity() * std::mem::size_of::<Dir>(),
            self.hashes.capacity() * 32 + self.targets.capacity(),
        )
    }
}

/// The code tree: sorted, unique relative paths (`/`-separated, no leading `/`), parents first.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    parts: Parts,
    nodes: Vec<Node>,
    /// Whether the merge added directories no layer has (see `merge`): such a tree is not
    /// cached to merge more layers onto, as those directories are not entries of a layer.
    pub(super) implicit_dirs: bool,
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
    pub(super) fn from_parts(mut parts: Parts, nodes: Vec<Node>) -> Tree {
        parts.seal();
        let t = Tree {
            parts,
            nodes,
            implicit_dirs: false,
        };
        debug_assert!((1..t.nodes.len()).all(|i| t.path(i - 1) < t.path(i)));
        t
    }

    /// The size of the tree's file ([`file`]).
    pub(super) fn file_bytes(&self) -> u64 {
        let p = &self.parts;
        (52 + 32
            + p.text.len()
            + p.dirs.len() * 12
            + p.hashes.len() * 32
            + p.targets.len()
            + self.nodes.len() * 44) as u64
    }

    /// The parts and nodes back, ready for more nodes (see [`Parts::unseal`]).
    pub(super) fn into_parts(self) -> (Parts, Vec<Node>) {
        let Tree {
            mut parts, nodes, ..
        } = self;
        parts.unseal();
        (parts, nodes)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The path of entry `i` (built: the tree keeps each directory's path once).
    pub fn path(&self, i: usize) -> String {
        self.parts.path(&self.nodes[i])
    }

    /// The path of entry `i`, built into `buf`.
    pub fn path_into<'b>(&self, i: usize, buf: &'b mut String) -> &'b str {
        self.parts.path_into(&self.nodes[i], buf)
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
            .binary_search_by(|n| self.parts.cmp_str(n, p))
            .ok()
    }

    /// The index of the first entry at or after `p` in path order (`len()` if none is).
    pub fn lower_bound(&self, p: &str) -> usize {
        self.nodes
            .partition_point(|n| self.parts.cmp_str(n, p) == std::cmp::Ordering::Less)
    }

    pub fn get(&self, p: &str) -> Option<Entry> {
        self.find(p).map(|i| self.entry(i))
    }

    pub fn contains_key(&self, p: &str) -> bool {
        self.find(p).is_some()
    }

    /// `(path, entry)` in path order.
    pub fn iter(&self) -> impl Iterator<Item = (String, Entry)> + '_ {
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
            "the image tree: {} entries, {} MiB of names and directories, {} MiB of nodes, {} MiB of hashes and targets",
            self.len(),
            paths >> 20,
            nodes >> 20,
            side >> 20
        );
    }

    /// The path of entry `i`, built into `buf`, which holds the path of entry `i - 1` (as
    /// [`Tree::path_into`] or this built it): a pass over the tree in order then changes only
    /// the end of it, as neighbours in path order share their directory, or one is the other's
    /// directory, or the next one's directory is one of the last one's (then `buf` is cut back
    /// to it). Otherwise it is [`Tree::path_into`].
    pub fn path_next<'b>(&self, i: usize, buf: &'b mut String) -> &'b str {
        if i == 0 {
            return self.path_into(i, buf);
        }
        let (a, b) = (self.nodes[i - 1], self.nodes[i]);
        let prev = self.parts.name(a.off, a.len);
        let name = self.parts.name(b.off, b.len);
        if !buf.ends_with(prev) {
            return self.path_into(i, buf);
        }
        // `buf` without the last name: the path of a's directory and a `/`, or empty at the top.
        let mut keep = buf.len() - prev.len();
        let bd = self.parts.dirs[b.dir as usize];
        if b.dir != 0 && bd.parent == a.dir && self.parts.name(bd.off, bd.len) == prev {
            // Down into a, a directory.
            buf.push('/');
        } else {
            // In a's directory or one above it.
            let mut d = a.dir;
            while d != b.dir {
                let x = self.parts.dirs[d as usize];
                match keep.checked_sub(usize::from(x.len) + 1) {
                    Some(k) if d != 0 => keep = k,
                    _ => return self.path_into(i, buf),
                }
                d = x.parent;
            }
            buf.truncate(keep);
        }
        buf.push_str(name);
        debug_assert_eq!(buf.as_str(), self.path(i));
        buf
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
        let v: Vec<String> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(v, ["a", "a-b", "a/b"]);
    }

    #[test]
    fn a_node_stays_small() {
        assert_eq!(std::mem::size_of::<Node>(), 44);
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
        let long = "a".repeat(65_536);
        let err = p.node(&long, &e(), 0).unwrap_err().to_string();
        assert!(err.contains("past the 64 KiB"), "{err}");
        let err = p
            .node(&format!("{long}/x"), &e(), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("past the 64 KiB"), "{err}");
        assert!(p.node(&"a".repeat(65_535), &e(), 0).is_ok());
        // A deep path costs its length, not its length times its depth.
        let mut p = Parts::default();
        let deep = "ab/".repeat(4_000) + "f";
        let n = p.node(&deep, &e(), 0).unwrap();
        assert_eq!(p.path(&n), deep);
        assert!(p.heap_bytes().0 < 40 * deep.len(), "{:?}", p.heap_bytes());
        assert!(check_arena(u32::MAX as usize).is_ok());
        assert!(check_arena(u32::MAX as usize + 1).is_err());
    }

    proptest::proptest! {
        /// Nodes sort as their whole paths do in byte order (the manifest's order), whichever
        /// directories they are in; `same`, `cmp_str`, `find` and the paths agree with it.
        #[test]
        fn nodes_sort_in_the_byte_order_of_their_paths(
            paths in proptest::collection::vec("[a-c._-]{1,3}(/[a-c.-]{1,3}){0,4}", 1..60)
        ) {
            let paths: Vec<String> = paths
                .into_iter()
                .map(|p| {
                    p.split('/')
                        .map(|c| if c == "." || c == ".." { "x" } else { c })
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect();
            let mut parts = Parts::default();
            let mut nodes: Vec<Node> = paths
                .iter()
                .enumerate()
                .map(|(k, p)| parts.node(p, &e(), k as u64).unwrap())
                .collect();
            nodes.sort_by(|a, b| parts.cmp(a, b).then({ a.pos }.cmp(&{ b.pos })));
            let mut want: Vec<(&str, u64)> =
                paths.iter().enumerate().map(|(k, p)| (p.as_str(), k as u64)).collect();
            want.sort();
            let got: Vec<(String, u64)> = nodes.iter().map(|n| (parts.path(n), n.pos)).collect();
            let want: Vec<(String, u64)> = want.iter().map(|(p, k)| (p.to_string(), *k)).collect();
            proptest::prop_assert_eq!(&got, &want);
            for a in &nodes {
                for b in &nodes {
                    let (pa, pb) = (parts.path(a), parts.path(b));
                    proptest::prop_assert_eq!(parts.cmp(a, b), pa.cmp(&pb), "{} {}", pa, pb);
                    proptest::prop_assert_eq!(parts.same(a, b), pa == pb);
                    proptest::prop_assert_eq!(parts.cmp_str(a, &pb), pa.as_str().cmp(pb.as_str()));
                }
                // Every ancestor of a path is a directory of the table, with that path.
                let p = parts.path(a);
                let mut anc = p.as_str();
                while let Some(k) = anc.rfind('/') {
                    anc = &anc[..k];
                    let d = parts.find_dir(anc);
                    proptest::prop_assert!(d.is_some(), "{}", anc);
                    let dn = parts.dir_node(d.unwrap());
                    proptest::prop_assert_eq!(parts.path(&dn), anc);
                }
            }
            nodes.dedup_by(|a, b| parts.same(a, b));
            let t = Tree::from_parts(parts, nodes);
            for p in &paths {
                let i = t.find(p);
                proptest::prop_assert!(i.is_some());
                proptest::prop_assert_eq!(&t.path(i.unwrap()), p);
            }
            proptest::prop_assert!(t.find("zz").is_none());
        }
    }

    #[test]
    fn a_damaged_load_is_taken_back_directories_too() {
        let mut p = Parts::default();
        let a = p.node("a/b/c", &e(), 0).unwrap();
        let m = p.mark();
        let x = p.node("a/x/y/z", &e(), 0).unwrap();
        assert!(p.find_dir("a/x/y").is_some());
        p.truncate(m);
        assert!(p.find_dir("a/x").is_none() && p.find_dir("a/x/y").is_none());
        assert_eq!(
            p.find_dir("a/b").map(|d| p.path(&p.dir_node(d))),
            Some("a/b".into())
        );
        assert_eq!(p.path(&a), "a/b/c");
        let y = p.node("a/x/y/z", &e(), 0).unwrap();
        assert_eq!(p.path(&y), "a/x/y/z");
        let _ = x;
    }
}
