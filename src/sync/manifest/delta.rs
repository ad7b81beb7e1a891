//! The manifest's delta, `manifest.delta.tsv` beside it: the lines the syncs since the manifest
//! was last written whole changed (new lines, and a line with a path alone for a path that left
//! it), while they are few. A sync that changes a few paths of a large tree then writes those
//! lines, not the whole manifest again (at a million entries about 225 MB, most of a small
//! layer's sync, and more when the page cache is full). [`Reader`] reads the manifest as the
//! file with its delta applied, in path order, so every reader sees one manifest; the next
//! write past the bound ([`max_bytes`]) is a whole manifest, whose commit removes the delta.
//!
//! It must never apply a delta to a manifest it was not written for: its header names the
//! file's inode, size and mtime, and another file's delta is ignored, with a warning (the
//! manifest then reads as an older sync left it, which makes the next sync compare content, as
//! after a power cut: nothing is lost). A damaged delta is an error naming its line, as a
//! damaged manifest is. It is written whole to a temporary file and renamed into place, never
//! in place. Over 500 lines: its format, its reader (the merge with the file, the split) and
//! its writer must stay one definition, and their tests sit with them.

use super::{is_tree_path, parse_rest, Lines, MEntry, Manifest};
use crate::config::Config;
use crate::tsv::unesc;
use anyhow::{Context, Result};
use std::cmp::Ordering;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HEADER: &str = "# mw-experimental sync manifest delta v1: base";

/// The delta of the manifest at `manifest`.
pub(in crate::sync) fn path_of(manifest: &Path) -> PathBuf {
    manifest.with_extension("delta.tsv")
}

/// How large the delta of a manifest of `base` bytes may grow: a 64th of it, so reading it
/// whole costs a small part of reading the manifest (at a million entries 3.5 MB, about 15,000
/// lines). Debug builds, which the tests run, allow half, so that their small trees take both
/// ways.
fn max_bytes(base: u64) -> u64 {
    if cfg!(debug_assertions) {
        base / 2
    } else {
        base / 64
    }
}

/// The file a delta is for: its inode, size and mtime (ns).
fn ident(f: &std::fs::File) -> std::io::Result<(u64, u64, i64)> {
    let m = f.metadata()?;
    Ok((
        m.ino(),
        m.size(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    ))
}

/// A delta's lines, sorted by path: each a path (in `paths`) and its line with the newline (in
/// `data`; empty for a path that left the manifest).
#[derive(Default)]
struct Delta {
    data: Vec<u8>,
    paths: String,
    lines: Vec<[u32; 4]>,
}

impl Delta {
    fn path(&self, k: usize) -> &str {
        let l = self.lines[k];
        &self.paths[l[0] as usize..l[1] as usize]
    }

    fn line(&self, k: usize) -> &[u8] {
        let l = self.lines[k];
        &self.data[l[2] as usize..l[3] as usize]
    }

    /// The delta of the manifest `name` (open as `base`); none when there is none, or when it
    /// was written for another file (with a warning).
    fn load(name: &Path, base: &std::fs::File) -> Result<Delta> {
        let dp = path_of(name);
        let mut f = match std::fs::File::open(&dp) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Delta::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dp.display())),
        };
        let what = || format!("reading {}", dp.display());
        let len = f.metadata().with_context(what)?.len();
        let bound = max_bytes(ident(base).with_context(what)?.1) + 256;
        let damaged = |n: usize, why: &str| {
            anyhow::anyhow!(
                "the manifest delta {} line {n} is damaged ({why}); move it away and run `sync` \
                 (without it the manifest reads as an older sync left it: live entries are \
                 compared, none is lost)",
                dp.display()
            )
        };
        if len > bound {
            anyhow::bail!(
                "the manifest delta {} is damaged (larger than a delta of its manifest is \
                 written); move it away and run `sync` (without it the manifest reads as an \
                 older sync left it: live entries are compared, none is lost)",
                dp.display()
            );
        }
        let mut data = Vec::with_capacity(len as usize);
        f.read_to_end(&mut data).with_context(what)?;
        let mut d = Delta::default();
        let mut at = 0usize;
        for (n, raw) in data.split_inclusive(|&b| b == b'\n').enumerate() {
            let (start, n) = (at, n + 1);
            at += raw.len();
            let Some(body) = raw.strip_suffix(b"\n") else {
                return Err(damaged(n, "cut short"));
            };
            if n == 1 {
                let want = ident(base).with_context(what)?;
                let got = std::str::from_utf8(body)
                    .ok()
                    .and_then(|h| h.strip_prefix(HEADER))
                    .and_then(|h| {
                        let v: Vec<&str> = h.split_whitespace().collect();
                        match v[..] {
                            [a, b, c] => Some((a.parse().ok()?, b.parse().ok()?, c.parse().ok()?)),
                            _ => None,
                        }
                    });
                match got {
                    None => return Err(damaged(n, "not a delta header")),
                    Some(g) if g != want => {
                        log::warn!(
                            "{} was written for another manifest than {}: ignored (the next \
                             sync compares the live entries it would have spared)",
                            dp.display(),
                            name.display()
                        );
                        return Ok(Delta::default());
                    }
                    Some(_) => continue,
                }
            }
            let (field, rest) = match memchr::memchr(b'\t', body) {
                Some(k) => (&body[..k], Some(&body[k + 1..])),
                None => (body, None),
            };
            let Ok(field) = std::str::from_utf8(field) else {
                return Err(damaged(n, "the path is not UTF-8"));
            };
            let path = unesc(field);
            if !is_tree_path(&path) {
                return Err(damaged(n, "not a path of the tree"));
            }
            if d.lines
                .last()
                .is_some_and(|_| path.as_str() <= d.path(d.lines.len() - 1))
            {
                return Err(damaged(n, "out of order"));
            }
            if let Some(r) = rest {
                if std::str::from_utf8(r).ok().and_then(parse_rest).is_none() {
                    return Err(damaged(n, "a field is missing or malformed"));
                }
            }
            let p0 = d.paths.len() as u32;
            d.paths.push_str(&path);
            let line = if rest.is_some() {
                [start as u32, at as u32]
            } else {
                [0, 0]
            };
            d.lines.push([p0, d.paths.len() as u32, line[0], line[1]]);
        }
        if d.lines.is_empty() && data.is_empty() {
            return Err(damaged(1, "empty"));
        }
        d.data = data;
        Ok(d)
    }
}

/// The manifest with its delta applied, one entry at a time in path order (a line of the
/// delta stands for the file's line of the same path; a path alone removes it). The file is
/// streamed ([`Lines`]); the delta, small by its bound, is held.
pub(in crate::sync) struct Reader {
    base: Lines,
    /// The file has a current line not yet given out or passed.
    base_ok: bool,
    delta: Arc<Delta>,
    /// The delta lines of this reader: `k..end` (a split gives each half its own).
    k: usize,
    end: usize,
    cur: Cur,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cur {
    Start,
    Base,
    /// The delta's line `k`; `over`: it stands for the file's current line.
    Delta {
        over: bool,
    },
    End,
}

impl Reader {
    /// The manifest of the last sync with its delta (none yet: an empty reader).
    pub(in crate::sync) fn open(cfg: &Config) -> Result<Reader> {
        let base = Lines::open(cfg)?;
        let delta = match &base.source {
            Some(f) => Delta::load(&Manifest::path(cfg), f)?,
            None => Delta::default(),
        };
        let end = delta.lines.len();
        Ok(Reader {
            base,
            base_ok: false,
            delta: Arc::new(delta),
            k: 0,
            end,
            cur: Cur::Start,
        })
    }

    /// Whether a delta applies: then [`Reader::span`] is no place in one file.
    pub(in crate::sync) fn has_delta(&self) -> bool {
        !self.delta.lines.is_empty()
    }

    /// Moves to the next entry; `false` at the end. (Damage: see [`Lines::next`].)
    pub(in crate::sync) fn next(&mut self) -> Result<bool> {
        match self.cur {
            Cur::Start | Cur::Base => self.base_ok = self.base.next()?,
            Cur::Delta { over } => {
                self.k += 1;
                if over {
                    self.base_ok = self.base.next()?;
                }
            }
            Cur::End => return Ok(false),
        }
        self.settle()
    }

    /// Takes as current the first of the file's current line and the next delta line,
    /// passing the paths the delta removes.
    fn settle(&mut self) -> Result<bool> {
        loop {
            let ord = match (self.base_ok, self.k < self.end) {
                (false, false) => {
                    self.cur = Cur::End;
                    return Ok(false);
                }
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (true, true) => self.delta.path(self.k).cmp(self.base.path()),
            };
            if ord == Ordering::Greater {
                self.cur = Cur::Base;
                return Ok(true);
            }
            let over = ord == Ordering::Equal;
            if self.delta.line(self.k).is_empty() {
                self.k += 1;
                if over {
                    self.base_ok = self.base.next()?;
                }
                continue;
            }
            self.cur = Cur::Delta { over };
            return Ok(true);
        }
    }

    /// The current entry's path (at the end, the file's last one read).
    pub(in crate::sync) fn path(&self) -> &str {
        match self.cur {
            Cur::Delta { .. } => self.delta.path(self.k),
            _ => self.base.path(),
        }
    }

    /// The current line, with its newline.
    pub(in crate::sync) fn raw(&self) -> &[u8] {
        match self.cur {
            Cur::Delta { .. } => self.delta.line(self.k),
            _ => self.base.raw(),
        }
    }

    /// Where the current line is in the file (for a reader without a delta: see
    /// [`Reader::has_delta`]).
    pub(in crate::sync) fn span(&self) -> (u64, u64) {
        self.base.span()
    }

    /// The file read, to copy [`Reader::span`]s of it (see [`Lines::into_source`]).
    pub(in crate::sync) fn into_source(self) -> Option<std::fs::File> {
        self.base.into_source()
    }

    /// The current entry, parsed.
    pub(in crate::sync) fn entry(&self) -> Result<MEntry> {
        match self.cur {
            Cur::Delta { .. } => super::rest_of(self.raw())
                .and_then(|r| std::str::from_utf8(r).ok())
                .and_then(parse_rest)
                .context("a manifest delta line changed after it was checked (a bug)"),
            _ => self.base.entry(),
        }
    }

    /// See [`Lines::same_image_fields`].
    pub(in crate::sync) fn same_image_fields(&self, fields: &[u8]) -> bool {
        super::same_image_fields(self.raw(), fields)
    }

    /// The entry at `p`, if the manifest has it; `p` must not be before the last one asked
    /// for (the engine asks in path order).
    pub(in crate::sync) fn seek(&mut self, p: &str) -> Result<Option<MEntry>> {
        loop {
            match self.cur {
                Cur::End => return Ok(None),
                Cur::Start => {
                    self.next()?;
                    continue;
                }
                _ => {}
            }
            match self.path().cmp(p) {
                Ordering::Less => {
                    self.next()?;
                }
                Ordering::Equal => return self.entry().map(Some),
                Ordering::Greater => return Ok(None),
            }
        }
    }

    /// Splits a reader just opened in two (see [`Lines::split`]); each half has the delta
    /// lines of its paths.
    pub(in crate::sync) fn split(&mut self, min: u64) -> Result<Option<Reader>> {
        let Some(b) = self.base.split(min)? else {
            return Ok(None);
        };
        // (The delta lines before the second half's first path are the first half's.)
        let (mut mid, mut hi) = (self.k, self.end);
        while mid < hi {
            let m = (mid + hi) / 2;
            if self.delta.path(m) < b.path() {
                mid = m + 1;
            } else {
                hi = m;
            }
        }
        let mut r = Reader {
            base: b,
            base_ok: true,
            delta: Arc::clone(&self.delta),
            k: mid,
            end: self.end,
            cur: Cur::Start,
        };
        if !r.settle()? {
            // (All after the middle removed by the delta: no split.)
            self.base.limit = u64::MAX;
            return Ok(None);
        }
        self.end = mid;
        Ok(Some(r))
    }
}

/// Whether a delta with about `n` more lines may fit the bound, for a manifest of about
/// `entries` lines (a first look, before any line is made: the bound is checked again on the
/// lines themselves); `false` when there is no manifest.
pub(in crate::sync) fn room(cfg: &Config, n: usize, entries: usize) -> bool {
    let name = Manifest::path(cfg);
    let Ok(base) = std::fs::metadata(&name) else {
        return false;
    };
    let have = std::fs::metadata(path_of(&name)).map_or(0, |m| m.len());
    let line = base.len() / entries.max(1) as u64;
    have.saturating_add((n as u64).saturating_mul(line)) <= max_bytes(base.len())
}

/// Writes the manifest's new delta: its delta's lines with `changes` (in path order, each path
/// once: path and line with its newline, or an empty line for a path that leaves the manifest)
/// applied, a line at a time (no more is held than the old delta). `false`, with nothing
/// written, when there is no manifest or the delta would pass its bound: then write the
/// manifest whole.
pub(in crate::sync) fn write(
    cfg: &Config,
    changes: impl Iterator<Item = (String, Vec<u8>)>,
) -> Result<bool> {
    let name = Manifest::path(cfg);
    let base = match std::fs::File::open(&name) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", name.display())),
    };
    let id = ident(&base).with_context(|| format!("reading {}", name.display()))?;
    let bound = max_bytes(id.1);
    let old = Delta::load(&name, &base)?;
    let dp = path_of(&name);
    let tmp = dp.with_extension(format!("tsv.tmp.{}", std::process::id()));
    let ctx = || format!("writing the manifest delta {}", tmp.display());
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(ctx)?);
    let r = (|| -> std::io::Result<bool> {
        let mut n = 0u64;
        let mut put = |out: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| {
            n += b.len() as u64;
            out.write_all(b).map(|()| n)
        };
        put(
            &mut out,
            format!("{HEADER} {} {} {}\n", id.0, id.1, id.2).as_bytes(),
        )?;
        let mut esc = String::new();
        let mut k = 0;
        let mut changes = changes.peekable();
        let mut last = String::new();
        // The two merged by path, a change winning over the old line of its path.
        loop {
            let take_old =
                k < old.lines.len() && changes.peek().is_none_or(|(p, _)| old.path(k) < p.as_str());
            let change;
            let (p, l) = if take_old {
                k += 1;
                (old.path(k - 1), old.line(k - 1))
            } else if let Some(c) = changes.next() {
                if k < old.lines.len() && old.path(k) == c.0 {
                    k += 1;
                }
                debug_assert!(last.is_empty() || last < c.0, "changes out of order");
                change = c;
                (change.0.as_str(), change.1.as_slice())
            } else {
                break;
            };
            if cfg!(debug_assertions) {
                last = p.to_string();
            }
            let n = if l.is_empty() {
                esc.clear();
                crate::tsv::esc(p, &mut esc);
                esc.push('\n');
                put(&mut out, esc.as_bytes())?
            } else {
                put(&mut out, l)?
            };
            if n > bound {
                return Ok(false);
            }
        }
        out.flush()?;
        Ok(true)
    })();
    drop(out);
    match r {
        Ok(true) => match std::fs::rename(&tmp, &dp) {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e).with_context(ctx)
            }
        },
        Ok(false) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(false)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e).with_context(ctx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, entry};
    use super::super::{line, Writer};
    use super::*;

    fn base(c: &Config, paths: &[(&str, u64)]) {
        let mut w = Writer::create(c).unwrap();
        for (p, s) in paths {
            w.entry(p, &entry(*s)).unwrap();
        }
        w.commit().unwrap();
    }

    fn changes(ch: &[(&str, Option<u64>)]) -> std::vec::IntoIter<(String, Vec<u8>)> {
        ch.iter()
            .map(|(p, s)| {
                let mut l = String::new();
                if let Some(s) = s {
                    line(p, &entry(*s), &mut l);
                }
                (p.to_string(), l.into_bytes())
            })
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn all(r: &mut Reader) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        while r.next().unwrap() {
            v.push((r.path().to_string(), r.entry().unwrap().e.size));
        }
        v
    }

    fn owned(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(p, s)| (p.to_string(), *s)).collect()
    }

    #[test]
    fn a_delta_reads_as_the_manifest_it_stands_for_and_a_whole_write_drops_it() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let long = "x".repeat(400);
        let paths: Vec<(&str, u64)> = vec![("a", 1), ("b", 2), ("c", 3), ("d/e", 4), (&long, 5)];
        base(&c, &paths);
        // Changed, added (before, between, after), removed (one there, one never there).
        let ch = changes(&[
            ("0", Some(10)),
            ("b", Some(20)),
            ("bb", Some(25)),
            ("c", None),
            ("cc", None),
            ("z", Some(90)),
        ]);
        assert!(write(&c, ch).unwrap());
        let want = owned(&[
            ("0", 10),
            ("a", 1),
            ("b", 20),
            ("bb", 25),
            ("d/e", 4),
            (&long, 5),
            ("z", 90),
        ]);
        assert_eq!(all(&mut Reader::open(&c).unwrap()), want);
        // A second delta builds on the first.
        assert!(write(&c, changes(&[("0", None), ("c", Some(30))])).unwrap());
        let want2 = owned(&[
            ("a", 1),
            ("b", 20),
            ("bb", 25),
            ("c", 30),
            ("d/e", 4),
            (&long, 5),
            ("z", 90),
        ]);
        let mut r = Reader::open(&c).unwrap();
        assert!(r.has_delta());
        assert_eq!(r.seek("bb").unwrap().unwrap().e.size, 25);
        assert!(r.seek("bc").unwrap().is_none());
        assert_eq!(r.seek("c").unwrap().unwrap().e.size, 30);
        assert_eq!(all(&mut Reader::open(&c).unwrap()), want2);
        // Split anywhere, the halves read the same, once each, in order.
        for min in [0, 1, 64] {
            let mut a = Reader::open(&c).unwrap();
            let mut got = Vec::new();
            if let Some(mut b) = a.split(min).unwrap() {
                let first = (b.path().to_string(), b.entry().unwrap().e.size);
                got = all(&mut a);
                got.push(first);
                got.extend(all(&mut b));
            } else {
                got.extend(all(&mut a));
            }
            assert_eq!(got, want2, "split at {min}");
        }
        // Too large a delta is not written; a whole manifest takes the delta away.
        let many: Vec<(String, Option<u64>)> =
            (0..200).map(|i| (format!("n{i:03}"), Some(i))).collect();
        let many: Vec<(&str, Option<u64>)> = many.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        assert!(!write(&c, changes(&many)).unwrap());
        assert_eq!(all(&mut Reader::open(&c).unwrap()), want2);
        let mut w = Writer::create(&c).unwrap();
        let mut r = Reader::open(&c).unwrap();
        while r.next().unwrap() {
            w.raw(r.raw()).unwrap();
        }
        w.commit().unwrap();
        assert!(!path_of(&Manifest::path(&c)).exists());
        let mut r = Reader::open(&c).unwrap();
        assert!(!r.has_delta());
        assert_eq!(all(&mut r), want2);
    }

    #[test]
    fn a_damaged_delta_is_an_error_naming_its_line_and_another_files_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        base(
            &c,
            &[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5), ("f", 6)],
        );
        assert!(write(&c, changes(&[("b", Some(20)), ("d", None)])).unwrap());
        let dp = path_of(&Manifest::path(&c));
        let good = std::fs::read_to_string(&dp).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        for (bad, why) in [
            (
                format!("{}\n{}\n{}\n", lines[0], lines[2], lines[1]),
                "line 3 is damaged (out of order)",
            ),
            (
                format!("{}\n{}", lines[0], lines[1]),
                "line 2 is damaged (cut short)",
            ),
            (
                format!("{}\n../x\n", lines[0]),
                "line 2 is damaged (not a path of the tree)",
            ),
            (
                format!("{}\nb\tf\t644\n", lines[0]),
                "line 2 is damaged (a field is missing",
            ),
            (
                "# something else\n".to_string(),
                "line 1 is damaged (not a delta header)",
            ),
            (String::new(), "line 1 is damaged (empty)"),
        ] {
            std::fs::write(&dp, &bad).unwrap();
            let e = Reader::open(&c).err().expect(why).to_string();
            assert!(e.contains(why) && e.contains("manifest delta"), "{e}");
        }
        // Written for another file: the manifest reads as the file alone.
        std::fs::write(&dp, good.replacen(" base ", " base 1", 1)).unwrap();
        let mut r = Reader::open(&c).unwrap();
        assert!(!r.has_delta());
        assert_eq!(
            all(&mut r),
            owned(&[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5), ("f", 6)])
        );
    }
}
