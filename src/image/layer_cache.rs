//! What a layer contributes to the merged tree (its entries with their BLAKE3 hashes, its
//! whiteouts, opaque directories and report lines), kept in `state_dir/layers/` per layer
//! *chain* (the layer's digest and those below it, and `image.path`), so a new image that shares
//! its lower layers with the last one reads only its new layers: a small top layer costs about
//! its own size instead of the whole image. Entries are keyed by chain, not by layer, because a
//! layer's hard links resolve against the layers below it. The directory is bounded by
//! `image.layer_cache_bytes` (oldest files go first); 0 turns the cache off.
//!
//! The cache only saves work: a file that is missing, damaged or was written by another version
//! is a miss (and is removed), never an error; a path in it that is not a clean relative path is
//! damage. It must never be the only copy of anything, and never let a cached entry reach the
//! tree that a fresh read of the layer would not give (its key covers everything the parse
//! depends on, and files are written whole under a temporary name, then renamed).

use super::{Entry, Kind};
use crate::tsv::{esc, unesc};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

const HEADER: &str = "# mw-experimental layer cache v1";

pub(super) struct LayerCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// One layer's parse: entries (path, entry, position), whiteouts, opaque directories, notes.
#[derive(Default)]
pub(super) struct Parsed {
    pub(super) adds: Vec<(String, Entry, u64)>,
    pub(super) whiteouts: Vec<String>,
    pub(super) opaque: Vec<String>,
    pub(super) notes: Vec<String>,
}

/// A relative path with no empty, `.` or `..` component (what the tar reader produces).
fn clean(p: &str) -> bool {
    p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl LayerCache {
    pub(super) fn new(state_dir: &std::path::Path, max_bytes: u64) -> Option<LayerCache> {
        (max_bytes > 0).then(|| LayerCache {
            dir: state_dir.join("layers"),
            max_bytes,
        })
    }

    /// The key of the layer at the top of `chain` ((digest, media type), lowest first).
    pub(super) fn key(prefix: &str, chain: &[(String, String)]) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"v1\n");
        h.update(prefix.as_bytes());
        for (d, mt) in chain {
            h.update(b"\n");
            h.update(d.as_bytes());
            h.update(b" ");
            h.update(mt.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    pub(super) fn load(&self, key: &str) -> Option<Parsed> {
        let path = self.dir.join(key);
        let text = std::fs::read_to_string(&path).ok()?;
        match parse(&text) {
            Some(p) => {
                // Touch it: eviction goes oldest first.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Some(p)
            }
            None => {
                log::warn!(
                    "the layer cache file {} is damaged: removed, the layer is read again",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores one layer's parse (best effort: a failure is logged, the sync goes on).
    pub(super) fn store(
        &self,
        key: &str,
        adds: &[(String, Entry, u64)],
        whiteouts: &[String],
        opaque: &[String],
        notes: &[String],
    ) {
        let mut s = String::with_capacity(64 + adds.len() * 120);
        s.push_str(HEADER);
        s.push('\n');
        for (p, e, pos) in adds {
            let _ = write!(
                s,
                "A\t{pos}\t{}\t{:o}\t{}\t{}\t{}\t",
                e.kind.letter(),
                e.mode,
                e.size,
                e.mtime,
                e.mtime_nsec
            );
            match &e.hash {
                Some(h) => {
                    for b in h {
                        let _ = write!(s, "{b:02x}");
                    }
                }
                None => s.push('-'),
            }
            s.push('\t');
            if let Some(t) = &e.target {
                s.push('=');
                esc(t, &mut s);
            }
            s.push('\t');
            esc(p, &mut s);
            s.push('\n');
        }
        for (tag, list) in [("W", whiteouts), ("O", opaque), ("N", notes)] {
            for x in list {
                s.push_str(tag);
                s.push('\t');
                esc(x, &mut s);
                s.push('\n');
            }
        }
        s.push_str("END\n");
        if s.len() as u64 > self.max_bytes {
            return;
        }
        let r = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".tmp.{key}.{}", std::process::id()));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(s.as_bytes())?;
            drop(f);
            std::fs::rename(&tmp, self.dir.join(key))
        })();
        if let Err(e) = r {
            log::debug!("not caching the layer ({}): {e}", self.dir.display());
            return;
        }
        self.evict();
    }

    /// Removes the oldest files until the directory fits `max_bytes`.
    fn evict(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<_> = rd
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (m.modified().ok(), m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, p) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

fn parse(text: &str) -> Option<Parsed> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut p = Parsed::default();
    let mut ended = false;
    for line in lines {
        if ended {
            return None;
        }
        if line == "END" {
            ended = true;
            continue;
        }
        let (tag, rest) = line.split_once('\t')?;
        match tag {
            "A" => {
                let f: Vec<&str> = rest.split('\t').collect();
                if f.len() != 9 {
                    return None;
                }
                let hash = if f[6] == "-" {
                    None
                } else {
                    if f[6].len() != 64 {
                        return None;
                    }
                    let mut h = [0u8; 32];
                    for (i, b) in h.iter_mut().enumerate() {
                        *b = u8::from_str_radix(f[6].get(2 * i..2 * i + 2)?, 16).ok()?;
                    }
                    Some(h)
                };
                let path = unesc(f[8]);
                if !clean(&path) {
                    return None;
                }
                let kind = Kind::from_letter(f[1])?;
                let target = match f[7].strip_prefix('=') {
                    Some(t) => Some(unesc(t)),
                    None if f[7].is_empty() => None,
                    None => return None,
                };
                if (kind == Kind::Symlink) != target.is_some() {
                    return None;
                }
                p.adds.push((
                    path,
                    Entry {
                        kind,
                        mode: u32::from_str_radix(f[2], 8).ok()?,
                        size: f[3].parse().ok()?,
                        mtime: f[4].parse().ok()?,
                        mtime_nsec: f[5].parse().ok()?,
                        hash,
                        target,
                    },
                    f[0].parse().ok()?,
                ));
            }
            "W" | "O" => {
                let path = unesc(rest);
                if !(clean(&path) || tag == "O" && path.is_empty()) {
                    return None;
                }
                if tag == "W" {
                    p.whiteouts.push(path);
                } else {
                    p.opaque.push(path);
                }
            }
            "N" => p.notes.push(unesc(rest)),
            _ => return None,
        }
    }
    ended.then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_parse_loads_back_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::new(dir.path(), 1 << 20).unwrap();
        let e = Entry {
            kind: Kind::Symlink,
            mode: 0o777,
            size: 0,
            mtime: 5,
            mtime_nsec: 0,
            hash: None,
            target: Some("a\tb".into()),
        };
        let f = Entry {
            kind: Kind::File,
            mode: 0o644,
            size: 3,
            mtime: 7,
            mtime_nsec: 1,
            hash: Some([7; 32]),
            target: None,
        };
        let adds = vec![
            ("x/l".to_string(), e.clone(), 9),
            ("x/f\nz".to_string(), f.clone(), 10),
        ];
        c.store(
            "k",
            &adds,
            &["x/w".into()],
            &["".into()],
            &["a note".into()],
        );
        let p = c.load("k").unwrap();
        assert_eq!(p.adds, adds);
        assert_eq!(p.whiteouts, vec!["x/w".to_string()]);
        assert_eq!(p.opaque, vec![String::new()]);
        assert_eq!(p.notes, vec!["a note".to_string()]);
        // A path climbing out, or a cut file, is a miss and the file goes.
        let text = std::fs::read_to_string(dir.path().join("layers/k")).unwrap();
        std::fs::write(dir.path().join("layers/k"), text.replace("x/l", "../l")).unwrap();
        assert!(c.load("k").is_none());
        assert!(!dir.path().join("layers/k").exists());
        std::fs::write(dir.path().join("layers/k"), &text[..text.len() - 4]).unwrap();
        assert!(c.load("k").is_none());
    }

    #[test]
    fn the_directory_stays_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::new(dir.path(), 300).unwrap();
        for k in ["a", "b", "c", "d"] {
            c.store(k, &[], &[], &[], &["n".repeat(60)]);
        }
        let total: u64 = std::fs::read_dir(dir.path().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 300, "{total}");
        assert!(c.load("d").is_some());
    }
}
