//! A merged tree as a file, for the layer cache: the tree's own arrays (names and directory
//! paths, the directory table, hashes, targets, the 44-byte nodes), little-endian, so a load is
//! one sequential read with no sort, no path built and no directory hashed: at a million
//! entries about 80 MB, read in about a tenth of a second where parsing each layer's entries
//! and merging them again takes seconds. Layout: `MWXTREE\0`, a u32 version, five u64 counts
//! (text bytes, directories, hashes, target bytes, nodes), the five arrays, then a BLAKE3 of
//! all that.
//!
//! Like every cache file it only saves work: it must never let a tree reach the sync that the
//! image would not give. A load checks the checksum and then every index a node or directory
//! holds (in range, on UTF-8 boundaries, depths consistent, kinds and flags valid), that each
//! name is one clean path component (no `/`, not `.` or `..`), and that the
//! nodes are in strictly increasing path order, so a damaged or foreign file is a miss (an
//! error string), never a panic or a wrong tree. It must never read the whole file into memory
//! at once (the arrays are filled as they stream by).

use super::{Dir, Node, Parts, Tree, HAS_HASH, HAS_TARGET, KIND_SHIFT};
use std::io::{BufReader, BufWriter, Read, Write};

const MAGIC: &[u8; 8] = b"MWXTREE\0";
const VERSION: u32 = 1;
const NODE: usize = 44;
const DIR: usize = 12;

/// Writes `tree` to `w`, with the checksum at the end.
pub(in crate::image) fn write(tree: &Tree, w: impl Write) -> std::io::Result<()> {
    let p = &tree.parts;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 18, w),
        hash: blake3::Hasher::new(),
    };
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    for n in [
        p.text.len(),
        p.dirs.len(),
        p.hashes.len(),
        p.targets.len(),
        tree.nodes.len(),
    ] {
        w.write_all(&(n as u64).to_le_bytes())?;
    }
    w.write_all(p.text.as_bytes())?;
    for d in &p.dirs {
        let mut b = [0u8; DIR];
        b[0..4].copy_from_slice(&d.off.to_le_bytes());
        b[4..6].copy_from_slice(&d.len.to_le_bytes());
        b[6..8].copy_from_slice(&d.depth.to_le_bytes());
        b[8..12].copy_from_slice(&d.parent.to_le_bytes());
        w.write_all(&b)?;
    }
    for h in &p.hashes {
        w.write_all(h)?;
    }
    w.write_all(&p.targets)?;
    for n in &tree.nodes {
        let mut b = [0u8; NODE];
        b[0..4].copy_from_slice(&{ n.dir }.to_le_bytes());
        b[4..8].copy_from_slice(&{ n.off }.to_le_bytes());
        b[8..10].copy_from_slice(&{ n.len }.to_le_bytes());
        b[10..12].copy_from_slice(&{ n.bits }.to_le_bytes());
        b[12..20].copy_from_slice(&{ n.pos }.to_le_bytes());
        b[20..28].copy_from_slice(&{ n.size }.to_le_bytes());
        b[28..36].copy_from_slice(&{ n.mtime }.to_le_bytes());
        b[36..40].copy_from_slice(&{ n.nsec }.to_le_bytes());
        b[40..44].copy_from_slice(&{ n.side }.to_le_bytes());
        w.write_all(&b)?;
    }
    let sum = *w.hash.finalize().as_bytes();
    let mut f = w.inner;
    f.write_all(&sum)?;
    f.into_inner().map_err(|e| e.into_error())?;
    Ok(())
}

/// Reads a tree written by [`write`] from `r` (`len` bytes in all). Any inconsistency is an
/// error (a miss).
pub(in crate::image) fn read(r: impl Read, len: u64) -> Result<Tree, String> {
    if len < 8 + 4 + 40 + 32 {
        return Err("too short".into());
    }
    let mut r = BufReader::with_capacity(
        1 << 18,
        HashingReader {
            inner: r,
            left: len - 32,
            hash: blake3::Hasher::new(),
        },
    );
    let io = |e: std::io::Error| e.to_string();
    let mut head = [0u8; 52];
    r.read_exact(&mut head).map_err(io)?;
    if &head[..8] != MAGIC || head[8..12] != VERSION.to_le_bytes() {
        return Err("another format or version".into());
    }
    let count = |k: usize| u64::from_le_bytes(head[12 + 8 * k..20 + 8 * k].try_into().unwrap());
    let (text_n, dirs_n, hashes_n, targets_n, nodes_n) =
        (count(0), count(1), count(2), count(3), count(4));
    // The counts must add up to the file's length before anything is allocated.
    let body = [
        Some(text_n),
        dirs_n.checked_mul(DIR as u64),
        hashes_n.checked_mul(32),
        Some(targets_n),
        nodes_n.checked_mul(NODE as u64),
    ]
    .into_iter()
    .try_fold(52u64 + 32, |a, x| x.and_then(|x| a.checked_add(x)));
    if body != Some(len) {
        return Err("counts that do not match the file's length".into());
    }
    if text_n > u64::from(u32::MAX)
        || targets_n > u64::from(u32::MAX)
        || (dirs_n == 0 && nodes_n > 0)
    {
        return Err("an array past what a tree can address".into());
    }
    let mut text = vec![0u8; text_n as usize];
    r.read_exact(&mut text).map_err(io)?;
    let text = String::from_utf8(text).map_err(|_| "names that are not UTF-8".to_string())?;
    let mut dirs = Vec::with_capacity(dirs_n as usize);
    for _ in 0..dirs_n {
        let mut b = [0u8; DIR];
        r.read_exact(&mut b).map_err(io)?;
        dirs.push(Dir {
            off: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            len: u16::from_le_bytes(b[4..6].try_into().unwrap()),
            depth: u16::from_le_bytes(b[6..8].try_into().unwrap()),
            parent: u32::from_le_bytes(b[8..12].try_into().unwrap()),
        });
    }
    let mut hashes = vec![[0u8; 32]; hashes_n as usize];
    for h in &mut hashes {
        r.read_exact(h).map_err(io)?;
    }
    let mut targets = vec![0u8; targets_n as usize];
    r.read_exact(&mut targets).map_err(io)?;
    let mut nodes = Vec::with_capacity(nodes_n as usize);
    for _ in 0..nodes_n {
        let mut b = [0u8; NODE];
        r.read_exact(&mut b).map_err(io)?;
        let u32_ = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_ = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        let u64_ = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        nodes.push(Node {
            dir: u32_(0),
            off: u32_(4),
            len: u16_(8),
            bits: u16_(10),
            pos: u64_(12),
            size: u64_(20),
            mtime: u64_(28) as i64,
            nsec: u32_(36),
            side: u32_(40),
        });
    }
    let want = r.get_mut().hash.finalize();
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum).map_err(io)?;
    if want.as_bytes() != &sum {
        return Err("a checksum mismatch".into());
    }
    let parts = Parts {
        text,
        dirs,
        hashes,
        targets,
        ..Parts::default()
    };
    check(&parts, &nodes)?;
    Ok(Tree::from_parts(parts, nodes))
}

/// Every index in range and the nodes in strictly increasing path order (see the module's
/// comment), so that nothing built from them can panic or be out of order.
fn check(p: &Parts, nodes: &[Node]) -> Result<(), String> {
    // A name is one clean path component: never empty, `.`, `..` or with a `/`.
    let name_ok = |off: u32, len: u16| {
        let (a, b) = (off as usize, off as usize + len as usize);
        b <= p.text.len()
            && p.text.is_char_boundary(a)
            && p.text.is_char_boundary(b)
            && !matches!(&p.text[a..b], "" | "." | "..")
            && !p.text.as_bytes()[a..b].contains(&b'/')
    };
    let Some(&root) = p.dirs.first() else {
        return Ok(()); // (then there are no nodes)
    };
    if (root.off, root.len, root.depth, root.parent) != (0, 0, 0, 0) {
        return Err("a bad root directory".into());
    }
    for (d, x) in p.dirs.iter().enumerate().skip(1) {
        let parent = x.parent as usize;
        if parent >= d
            || u32::from(x.depth) != u32::from(p.dirs[parent].depth) + 1
            || x.len == 0
            || !name_ok(x.off, x.len)
        {
            return Err(format!("a bad directory ({d})"));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let (dir, bits, side, pos) = (n.dir, n.bits, n.side, n.pos);
        let kind = (bits >> KIND_SHIFT) & 3;
        let ok = (dir as usize) < p.dirs.len()
            && n.len > 0
            && name_ok(n.off, n.len)
            && kind != 3
            && pos & super::super::layers::CHAIN == 0
            && match (bits & HAS_HASH != 0, bits & HAS_TARGET != 0) {
                (true, true) => false,
                (true, false) => (side as usize) < p.hashes.len(),
                (false, true) => target_ok(p, side as usize),
                (false, false) => true,
            };
        if !ok {
            return Err(format!("a bad node ({i})"));
        }
        if i > 0 && p.cmp(&nodes[i - 1], n) != std::cmp::Ordering::Less {
            return Err(format!("nodes out of order ({i})"));
        }
    }
    Ok(())
}

/// Whether a target starts at `o` (a u32 length, then that many bytes of UTF-8).
fn target_ok(p: &Parts, o: usize) -> bool {
    let Some(l) = p.targets.get(o..o + 4) else {
        return false;
    };
    let l = u32::from_le_bytes(l.try_into().unwrap()) as usize;
    p.targets
        .get(o + 4..o + 4 + l)
        .is_some_and(|t| std::str::from_utf8(t).is_ok())
}

/// A writer that hashes what goes through it (also the layer cache's).
pub(in crate::image) struct Hashing<W> {
    pub(in crate::image) inner: W,
    pub(in crate::image) hash: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes the first `left` bytes it reads (the payload before the checksum; also
/// the layer cache's).
pub(in crate::image) struct HashingReader<R> {
    pub(in crate::image) inner: R,
    pub(in crate::image) left: u64,
    pub(in crate::image) hash: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(b)?;
        let h = (n as u64).min(self.left) as usize;
        self.hash.update(&b[..h]);
        self.left -= h as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Entry, Kind};

    fn sample() -> Tree {
        let f = |h: u8| Entry {
            kind: Kind::File,
            mode: 0o644,
            size: 3,
            mtime: 7,
            mtime_nsec: 1,
            hash: Some([h; 32]),
            target: None,
        };
        let d = Entry {
            kind: Kind::Dir,
            mode: 0o755,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            hash: None,
            target: None,
        };
        let s = Entry {
            kind: Kind::Symlink,
            mode: 0o777,
            target: Some("../ü".into()),
            ..d.clone()
        };
        Tree::from_sorted(vec![
            ("a".into(), d.clone(), 0),
            ("a/b".into(), f(1), 1),
            ("a/c".into(), s, 2),
            ("a/d".into(), d, 3),
            ("a/d/e".into(), f(2), (1 << 40) | 4),
        ])
        .unwrap()
    }

    #[test]
    fn a_tree_round_trips() {
        let t = sample();
        let mut b = Vec::new();
        write(&t, &mut b).unwrap();
        let back = read(&b[..], b.len() as u64).unwrap();
        let rows = |t: &Tree| {
            (0..t.len())
                .map(|i| (t.path(i), t.entry(i), t.pos(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(&back), rows(&t));
        assert_eq!(back.find("a/d/e"), Some(4));
    }

    #[test]
    fn damage_is_a_miss_never_a_panic() {
        let t = sample();
        let mut b = Vec::new();
        write(&t, &mut b).unwrap();
        assert!(read(&b[..b.len() - 1], b.len() as u64 - 1).is_err());
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x41;
            assert!(read(&x[..], x.len() as u64).is_err(), "byte {i}");
        }
        // A file whose checksum matches but whose nodes point out of range or out of order:
        // rewritten with a fresh checksum, still refused.
        let resum = |mut x: Vec<u8>| {
            let n = x.len() - 32;
            let h = *blake3::hash(&x[..n]).as_bytes();
            x[n..].copy_from_slice(&h);
            x
        };
        let nodes_at = b.len() - 32 - 5 * NODE;
        let mut x = b.clone();
        x[nodes_at..nodes_at + 4].copy_from_slice(&999u32.to_le_bytes());
        let e = read(&resum(x)[..], b.len() as u64).unwrap_err();
        assert!(e.contains("bad node"), "{e}");
        let mut x = b.clone();
        let (first, second) = (
            nodes_at..nodes_at + NODE,
            nodes_at + NODE..nodes_at + 2 * NODE,
        );
        let a = x[first.clone()].to_vec();
        x.copy_within(second.clone(), first.start);
        x[second].copy_from_slice(&a);
        let e = read(&resum(x)[..], b.len() as u64).unwrap_err();
        assert!(e.contains("out of order"), "{e}");
        // A name that is not one path component: "b" made "/".
        let text_at = 52;
        let k = b[text_at..].iter().position(|&c| c == b'b').unwrap() + text_at;
        let mut x = b.clone();
        x[k] = b'/';
        let e = read(&resum(x)[..], b.len() as u64).unwrap_err();
        assert!(e.contains("bad node"), "{e}");
    }
}
