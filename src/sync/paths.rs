//! A sorted set of paths kept small: what `diff` needs of the manifest (which paths are ours)
//! while it walks the live tree. At a million paths a `Vec<String>` held ~120 MB (the path
//! and a 24-byte `String` each); here each path is stored as the length it shares with the
//! one before it and the rest (front coding), with every 16th path whole so that a lookup is a
//! binary search over those and a scan of at most 16: about 15 bytes a path in a MediaWiki
//! tree. It is plain data: it must never read the disk.

/// Paths added in strictly increasing byte order (the manifest's order).
#[derive(Default)]
pub(super) struct PathSet {
    bytes: Vec<u8>,
    /// Where each 16th path starts in `bytes` (those are stored whole).
    restarts: Vec<u32>,
    last: String,
    len: usize,
}

const EVERY: usize = 16;

fn put(v: &mut Vec<u8>, mut x: usize) {
    while x >= 0x80 {
        v.push((x as u8) | 0x80);
        x >>= 7;
    }
    v.push(x as u8);
}

fn get(v: &[u8], at: &mut usize) -> usize {
    let (mut x, mut shift) = (0usize, 0);
    loop {
        let b = v[*at];
        *at += 1;
        x |= usize::from(b & 0x7f) << shift;
        if b < 0x80 {
            return x;
        }
        shift += 7;
    }
}

impl PathSet {
    /// Adds `p`, which must sort after every path added so far (else it is an error: the
    /// manifest is checked to be sorted as it is read, so this is only a guard).
    pub(super) fn push(&mut self, p: &str) -> anyhow::Result<()> {
        if self.len > 0 && p <= self.last.as_str() {
            anyhow::bail!("the manifest is not sorted at {p:?}");
        }
        let Ok(at) = u32::try_from(self.bytes.len()) else {
            anyhow::bail!("the manifest's paths pass 4 GiB");
        };
        let shared = if self.len % EVERY == 0 {
            self.restarts.push(at);
            0
        } else {
            self.last
                .bytes()
                .zip(p.bytes())
                .take_while(|(a, b)| a == b)
                .count()
        };
        put(&mut self.bytes, shared);
        put(&mut self.bytes, p.len() - shared);
        self.bytes.extend_from_slice(&p.as_bytes()[shared..]);
        self.last.clear();
        self.last.push_str(p);
        self.len += 1;
        Ok(())
    }

    /// Reads the path at `at` (after `prev`, the one before it) into `prev`; the next's start.
    fn read(&self, mut at: usize, prev: &mut Vec<u8>) -> usize {
        let shared = get(&self.bytes, &mut at);
        let rest = get(&self.bytes, &mut at);
        prev.truncate(shared);
        prev.extend_from_slice(&self.bytes[at..at + rest]);
        at + rest
    }

    pub(super) fn contains(&self, p: &str) -> bool {
        let p = p.as_bytes();
        let mut buf = Vec::new();
        // The last block whose first path is <= p.
        let k = self.restarts.partition_point(|&r| {
            self.read(r as usize, &mut buf);
            buf.as_slice() <= p
        });
        if k == 0 {
            return false;
        }
        let block = k - 1;
        let mut at = self.restarts[block] as usize;
        let n = EVERY.min(self.len - block * EVERY);
        for _ in 0..n {
            at = self.read(at, &mut buf);
            match buf.as_slice().cmp(p) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return true,
                std::cmp::Ordering::Greater => return false,
            }
        }
        false
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Bytes held (for the debug log).
    pub(super) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.restarts.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// It says of every path whether it was added, as a sorted `Vec<String>` would.
        #[test]
        fn knows_exactly_the_paths_added(
            mut paths in proptest::collection::vec("[a-c/]{0,6}", 0..80),
            probes in proptest::collection::vec("[a-d/]{0,7}", 0..40),
        ) {
            paths.sort();
            paths.dedup();
            let mut s = PathSet::default();
            for p in &paths {
                s.push(p).unwrap();
            }
            for p in paths.iter().chain(&probes) {
                proptest::prop_assert_eq!(s.contains(p), paths.binary_search(p).is_ok(), "{}", p);
            }
        }
    }

    #[test]
    fn out_of_order_is_refused_and_long_paths_share_their_prefix() {
        let mut s = PathSet::default();
        s.push("a/b").unwrap();
        assert!(s.push("a/b").is_err());
        assert!(s.push("a").is_err());
        let dir = "x/".repeat(200);
        for i in 0..1000 {
            s.push(&format!("{dir}{i:05}")).unwrap();
        }
        assert!(s.contains(&format!("{dir}00999")) && !s.contains(&format!("{dir}01000")));
        // Each path costs its new part, not its whole length (405 bytes; every 16th is whole).
        assert!(s.heap_bytes() < 1000 * 405 / 4, "{}", s.heap_bytes());
    }
}
