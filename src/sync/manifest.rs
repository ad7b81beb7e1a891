//! What the last sync wrote, kept in `state_dir/sync`: `manifest.tsv` (one line per path of the
//! tree: the image entry as written and the live inode/mtime/ctime right after; tab-separated,
//! with `\\`, tab and newline escaped and hashes in hex) and `last.json` ([`LastSync`]: the
//! image digest, which the unchanged-image check reads without parsing the manifest). It must
//! never write either file in place (a killed run leaves the old one whole), never skip a
//! damaged or out-of-order manifest line (that is an error naming the file, the line and what to
//! do), and never hold the whole manifest: it is read with a [`Reader`] and written with a
//! [`Writer`], a line at a time in path order (runs of unchanged lines copied from the old
//! file as they are), because at a million entries it is ~150 MB. Over 500 lines: the line
//! format, its fast reader and the byte-for-byte comparison the sync pass relies on must stay
//! one definition, and their tests (round trip, chunk edges, the path rule) sit with it.

pub(super) mod delta;

pub(super) use delta::Reader;

use super::sync_dir;
use crate::config::Config;
use crate::image::{Entry, Kind};
use crate::tsv::{esc, unesc};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The last sync: what the unchanged-image check reads (small; the manifest is not parsed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct LastSync {
    pub(super) reference: String,
    pub(super) digest: String,
    pub(super) synced_at: String,
    pub(super) unix: u64,
    pub(super) files: u64,
    pub(super) local_edits: u64,
    /// The release values file that named the image (`image.release_file`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) release_file: Option<String>,
    /// Every edit of the tree summed per editor, as the end of the last sync (or reset) found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) edits: Option<super::editors::Census>,
}

impl LastSync {
    fn path(cfg: &Config) -> PathBuf {
        sync_dir(cfg).join("last.json")
    }

    pub(super) fn read(cfg: &Config) -> Result<Option<LastSync>> {
        let p = Self::path(cfg);
        match std::fs::read(&p) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub(super) fn write(&self, cfg: &Config) -> Result<()> {
        let mut b = serde_json::to_vec_pretty(self)?;
        b.push(b'\n');
        crate::state::write_atomic(&Self::path(cfg), &b, 0o644)
    }

    pub(super) fn observed(&self) -> serde_json::Value {
        json!({
            "image": self.reference,
            "tag": self.reference.rsplit('/').next().and_then(|l| l.split_once(':')).map(|(_, t)| t),
            "release_file": self.release_file,
            "digest": self.digest,
            "synced_at": self.synced_at,
            "files": self.files,
            "local_edits": self.local_edits,
            "edits": self.edits,
        })
    }
}

/// One manifest line: the image entry as written, and the live stat right after writing.
#[derive(Clone, Debug)]
pub(super) struct MEntry {
    pub(super) e: Entry,
    pub(super) live: (u64, i64, i64),
}

/// Appends the lowercase hex of `h` to `s`.
fn hex_into(h: &[u8; 32], s: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 64];
    for (pair, x) in b.chunks_exact_mut(2).zip(h) {
        pair[0] = DIGITS[(x >> 4) as usize];
        pair[1] = DIGITS[(x & 15) as usize];
    }
    s.extend_from_slice(&b);
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut h = [0u8; 32];
    for (b, pair) in h.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *b = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(h)
}

/// The manifest file: `manifest.tsv` in the sync state directory.
pub(super) struct Manifest;

impl Manifest {
    const HEADER: &'static str = "# mw-experimental sync manifest v1: path kind mode size mtime.nsec blake3 target ino live_mtime_ns live_ctime_ns";

    pub(super) fn path(cfg: &Config) -> PathBuf {
        sync_dir(cfg).join("manifest.tsv")
    }
}

/// The manifest read one line at a time, in its order (sorted by path), so a run never holds
/// the whole file: a million-entry manifest is about 150 MB of text. It is read in large chunks
/// and split on newlines in place; [`Lines::next`] checks each line's path (UTF-8, a path of
/// the tree, after the one before), the other fields are checked where they are used
/// ([`Lines::entry`], [`Lines::same_image_fields`]).
pub(super) struct Lines {
    file: Option<std::fs::File>,
    /// The same open file, kept past the end ([`Lines::into_source`]).
    source: Option<std::fs::File>,
    name: PathBuf,
    line_no: usize,
    /// Read from the file: `buf[..filled]`; the current line is `buf[start..end]` (with its
    /// newline, but for a last line without one).
    buf: Vec<u8>,
    /// Where `buf[0]` is in the file.
    base: u64,
    filled: usize,
    start: usize,
    end: usize,
    /// The file has no more to read.
    eof: bool,
    /// Lines that start at or after this offset are not this reader's ([`Lines::split`]).
    limit: u64,
    path: String,
    /// The previous path's buffer, reused.
    spare: String,
}

/// How much of the manifest a [`Lines`] reads at a time (a longer line grows it).
const CHUNK: usize = 1 << 20;

impl Lines {
    /// The manifest of the last sync (none yet: an empty reader).
    pub(super) fn open(cfg: &Config) -> Result<Lines> {
        let name = Manifest::path(cfg);
        let file = match std::fs::File::open(&name) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("reading the manifest {}", name.display()))
            }
        };
        let source = match &file {
            Some(f) => Some(
                f.try_clone()
                    .with_context(|| format!("reading the manifest {}", name.display()))?,
            ),
            None => None,
        };
        Ok(Lines::at(file, source, name, 0))
    }

    /// A reader of `file` (named `name`) from the offset `base`.
    fn at(
        file: Option<std::fs::File>,
        source: Option<std::fs::File>,
        name: PathBuf,
        base: u64,
    ) -> Lines {
        Lines {
            source,
            base,
            buf: if file.is_some() {
                vec![0; CHUNK]
            } else {
                Vec::new()
            },
            file,
            name,
            line_no: 0,
            filled: 0,
            start: 0,
            end: 0,
            eof: false,
            limit: u64::MAX,
            path: String::new(),
            spare: String::new(),
        }
    }

    /// Splits a manifest of at least `min` bytes in two, for two passes side by side (on a
    /// reader just opened: the split is at the file's middle, wherever this one is): returns
    /// a reader of the second half, on its first entry (the first after the
    /// file's middle), and this one stops before that entry. `None` (and this reader as it
    /// was) for a smaller file or when no entry follows the middle. The second reader checks
    /// the order of its own lines only, and its line numbers count from the middle: the
    /// caller checks that the halves join in order, and reads the file again in one pass to
    /// report damage where it is.
    pub(super) fn split(&mut self, min: u64) -> Result<Option<Lines>> {
        let Some(f) = &self.file else {
            return Ok(None);
        };
        let what = || format!("reading the manifest {}", self.name.display());
        let len = f.metadata().with_context(what)?.len();
        if len < min.max(2) {
            return Ok(None);
        }
        let f = f.try_clone().with_context(what)?;
        let mut b = Lines::at(Some(f), None, self.name.clone(), len / 2);
        // The rest of the line the middle falls in is the first half's.
        loop {
            if let Some(k) = memchr::memchr(b'\n', &b.buf[b.end..b.filled]) {
                b.end += k + 1;
                break;
            }
            b.end = b.filled;
            if !b.fill()? {
                return Ok(None);
            }
        }
        if !matches!(b.next(), Ok(true)) {
            return Ok(None);
        }
        self.limit = b.span().0;
        Ok(Some(b))
    }

    fn damaged(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "the manifest {} line {} is damaged ({what}); move it away and run `sync --force` (edits are backed up)",
            self.name.display(),
            self.line_no
        )
    }

    /// Reads more of the file after the current line, which moves to the front of the buffer
    /// (the buffer grows when one line fills it); `false` at the end of the file.
    fn fill(&mut self) -> Result<bool> {
        // At an offset, not the file's position: the two halves of a split share one file.
        use std::os::unix::fs::FileExt as _;
        let Some(f) = &self.file else {
            return Ok(false);
        };
        self.buf.copy_within(self.end..self.filled, 0);
        self.base += self.end as u64;
        self.filled -= self.end;
        self.start = 0;
        self.end = 0;
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match f.read_at(&mut self.buf[self.filled..], self.base + self.filled as u64) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.filled += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading the manifest {}", self.name.display()))
                }
            }
        }
    }

    /// Moves to the next entry; `false` at the end. A line that is not sorted after the one
    /// before it is damage.
    pub(super) fn next(&mut self) -> Result<bool> {
        if self.file.is_none() {
            return Ok(false);
        }
        loop {
            if self.base + self.end as u64 >= self.limit {
                self.file = None;
                return Ok(false);
            }
            let end = match memchr::memchr(b'\n', &self.buf[self.end..self.filled]) {
                Some(k) => self.end + k + 1,
                None if !self.eof => {
                    self.fill()?;
                    continue;
                }
                // The last line, without its newline.
                None if self.end < self.filled => self.filled,
                None => {
                    self.file = None;
                    return Ok(false);
                }
            };
            (self.start, self.end) = (self.end, end);
            self.line_no += 1;
            let line = &self.buf[self.start..self.end];
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            if body.is_empty() || body[0] == b'#' {
                continue;
            }
            let field = match memchr::memchr(b'\t', body) {
                Some(k) => &body[..k],
                None => body,
            };
            let Ok(field) = std::str::from_utf8(field) else {
                return Err(self.damaged("the path is not UTF-8"));
            };
            let mut path = std::mem::take(&mut self.spare);
            path.clear();
            if memchr::memchr(b'\\', field.as_bytes()).is_some() {
                path.push_str(&unesc(field));
            } else {
                path.push_str(field);
            }
            if !is_tree_path(&path) {
                self.spare = path;
                return Err(self.damaged("not a path of the tree"));
            }
            if !self.path.is_empty() && path <= self.path {
                self.spare = path;
                return Err(self.damaged("out of order"));
            }
            self.spare = std::mem::replace(&mut self.path, path);
            return Ok(true);
        }
    }

    /// The current entry's path.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The current line, with its newline (to copy it unchanged; only its path was checked).
    pub(super) fn raw(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Where the current line is in the file: its first byte and the one after its end.
    pub(super) fn span(&self) -> (u64, u64) {
        (self.base + self.start as u64, self.base + self.end as u64)
    }

    /// The file read (the same open file, so the same bytes whatever replaced it since: the
    /// manifest is never written in place), to copy [`Lines::span`]s of it with
    /// [`Writer::copy`]; none when there was no manifest.
    pub(super) fn into_source(self) -> Option<std::fs::File> {
        self.source
    }

    /// The current line's fields after the path (without the newline); `None` if it has none.
    fn rest(&self) -> Option<&[u8]> {
        rest_of(self.raw())
    }

    /// The current entry, parsed.
    pub(super) fn entry(&self) -> Result<MEntry> {
        match self
            .rest()
            .and_then(|r| std::str::from_utf8(r).ok())
            .and_then(parse_rest)
        {
            Some(m) => Ok(m),
            None => Err(self.damaged("a field is missing or malformed")),
        }
    }
}

/// The fields after the path of a manifest line (without the newline); `None` if it has none.
fn rest_of(line: &[u8]) -> Option<&[u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    memchr::memchr(b'\t', body).map(|k| &body[k + 1..])
}

/// Whether the manifest line `line` holds, byte for byte, the image fields `fields` (as
/// [`image_fields`] wrote them for an entry) and well-formed live fields: then
/// [`Reader::entry`] would parse to that entry (when [`fields_round_trip`] says so), which
/// this settles without parsing. `false` says nothing: parse it.
fn same_image_fields(line: &[u8], fields: &[u8]) -> bool {
    let Some(live) = rest_of(line)
        .and_then(|r| r.strip_prefix(fields))
        .and_then(|r| r.strip_prefix(b"\t"))
    else {
        return false;
    };
    let mut it = live.split(|&b| b == b'\t');
    let (Some(ino), Some(mt), Some(ct), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return false;
    };
    // The checks `parse_rest` makes of the live fields.
    // (Digits that fit, after a `-` where one may be, parse; anything else is parsed.)
    fn num(f: &[u8], signed: bool) -> bool {
        let digits = if signed {
            f.strip_prefix(b"-").unwrap_or(f)
        } else {
            f
        };
        // (Nineteen digits pass i64::MAX only past "9223372036854775807", which is as
        // long, so compares as text.)
        let fits = digits.len() < 19
            || (digits.len() == 19 && (!signed || digits <= &b"9223372036854775807"[..]));
        (!digits.is_empty() && fits && digits.iter().all(u8::is_ascii_digit))
            || std::str::from_utf8(f).is_ok_and(|f| {
                if signed {
                    f.parse::<i64>().is_ok()
                } else {
                    f.parse::<u64>().is_ok()
                }
            })
    }
    num(ino, false) && num(mt, true) && num(ct, true)
}

/// A new manifest, written in path order to a temporary file and renamed over the old one on
/// [`Writer::commit`] (a killed run leaves the old one whole; dropped uncommitted, it is removed).
pub(super) struct Writer {
    out: Option<std::io::BufWriter<std::fs::File>>,
    tmp: PathBuf,
    path: PathBuf,
    buf: String,
}

impl Writer {
    pub(super) fn create(cfg: &Config) -> Result<Writer> {
        let path = Manifest::path(cfg);
        let tmp = path.with_extension(format!("tsv.tmp.{}", std::process::id()));
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("writing the manifest {}", tmp.display()))?;
        let mut w = Writer {
            out: Some(std::io::BufWriter::with_capacity(CHUNK, f)),
            tmp,
            path,
            buf: String::with_capacity(256),
        };
        w.raw(format!("{}\n", Manifest::HEADER).as_bytes())?;
        Ok(w)
    }

    pub(super) fn entry(&mut self, p: &str, m: &MEntry) -> Result<()> {
        let mut s = std::mem::take(&mut self.buf);
        s.clear();
        line(p, m, &mut s);
        let r = self.raw(s.as_bytes());
        self.buf = s;
        r
    }

    /// A line as it is (with its newline).
    pub(super) fn raw(&mut self, l: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let out = self.out.as_mut().expect("not committed");
        out.write_all(l)
            .with_context(|| format!("writing the manifest {}", self.tmp.display()))
    }

    /// Bytes `start..end` of `from` (whole lines of an old manifest, see [`Reader::span`]) as
    /// they are: copied by the kernel where it can (`copy_file_range`), else read and written.
    pub(super) fn copy(&mut self, from: &std::fs::File, (start, end): (u64, u64)) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::FileExt as _;
        let tmp = &self.tmp;
        let out = self.out.as_mut().expect("not committed");
        let ctx = || format!("writing the manifest {}", tmp.display());
        out.flush().with_context(ctx)?;
        let mut off = start;
        while off < end {
            let want = usize::try_from(end - off)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match rustix::fs::copy_file_range(from, Some(&mut off), out.get_mut(), None, want) {
                Ok(n) if n > 0 => continue,
                Err(rustix::io::Errno::INTR) => continue,
                _ => break,
            }
        }
        // What the kernel did not copy (another file system, an old kernel), by hand.
        let mut buf = vec![0u8; usize::try_from(end - off).unwrap_or(CHUNK).min(CHUNK)];
        while off < end {
            let want = usize::try_from(end - off).unwrap_or(CHUNK).min(buf.len());
            let n = from.read_at(&mut buf[..want], off).with_context(ctx)?;
            if n == 0 {
                anyhow::bail!("{}: the old manifest ended early", ctx());
            }
            out.write_all(&buf[..n]).with_context(ctx)?;
            off += n as u64;
        }
        Ok(())
    }

    /// Flushes and renames it into place, the old delta ([`delta`]) removed first: it belongs
    /// to the old file. No fsync: after a power cut (or a kill between the two steps) an old or
    /// empty manifest only makes the next sync compare content (live entries equal to the image
    /// are adopted, others are kept as edits), never lose data.
    pub(super) fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("committed once");
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|_| match std::fs::remove_file(delta::path_of(&self.path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => std::fs::rename(&self.tmp, &self.path),
            })
            .with_context(|| format!("writing the manifest {}", self.path.display()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.out.is_some() || self.tmp.exists() {
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// One manifest line (with its newline): also the form of a journaled intent.
pub(super) fn line(p: &str, m: &MEntry, s: &mut String) {
    esc(p, s);
    s.push('\t');
    let mut f = Vec::with_capacity(128);
    image_fields(&m.e, &mut f);
    // (ASCII but for the target, which came from a `str`.)
    s.push_str(&String::from_utf8_lossy(&f));
    let _ = writeln!(s, "\t{}\t{}\t{}", m.live.0, m.live.1, m.live.2);
}

/// The image fields of a manifest line (kind, mode, size, mtime.nsec, hash, target: what
/// [`line`] writes between the path and the live fields), appended to `s`.
pub(super) fn image_fields(e: &Entry, s: &mut Vec<u8>) {
    // (As `write!` with `{}` and `{:o}` would write them, by hand: this runs for every path.)
    s.push(e.kind.letter() as u8);
    s.push(b'\t');
    push_digits::<8>(s, u64::from(e.mode));
    s.push(b'\t');
    push_digits::<10>(s, e.size);
    s.push(b'\t');
    if e.mtime < 0 {
        s.push(b'-');
    }
    push_digits::<10>(s, e.mtime.unsigned_abs());
    s.push(b'.');
    push_digits::<10>(s, u64::from(e.mtime_nsec));
    s.push(b'\t');
    match &e.hash {
        Some(h) => hex_into(h, s),
        None => s.push(b'-'),
    }
    s.push(b'\t');
    if let Some(t) = &e.target {
        let mut t2 = String::new();
        esc(t, &mut t2);
        s.extend_from_slice(t2.as_bytes());
    }
}

/// Appends `v` in base `RADIX` (8 or 10), as `{:o}` or `{}` writes it.
fn push_digits<const RADIX: u64>(s: &mut Vec<u8>, mut v: u64) {
    let mut b = [0u8; 24];
    let mut k = b.len();
    loop {
        k -= 1;
        b[k] = b'0' + (v % RADIX) as u8;
        v /= RADIX;
        if v == 0 {
            break;
        }
    }
    s.extend_from_slice(&b[k..]);
}

/// Whether [`image_fields`] of `e` parse back to `e` (all but an empty target, which reads back
/// as none): only then may [`Reader::same_image_fields`] stand for a comparison of entries.
pub(super) fn fields_round_trip(e: &Entry) -> bool {
    e.target.as_deref() != Some("")
}

/// Parses what [`line`] wrote (without the newline); `None` when it is damaged.
pub(super) fn parse_line(line: &str) -> Option<(String, MEntry)> {
    let (path, rest) = line.split_once('\t')?;
    let path = unesc(path);
    if !is_tree_path(&path) {
        return None;
    }
    Some((path, parse_rest(rest)?))
}

/// The fields after the path.
fn parse_rest(rest: &str) -> Option<MEntry> {
    let mut f = [""; 9];
    let mut it = rest.split('\t');
    for slot in f.iter_mut() {
        *slot = it.next()?;
    }
    if it.next().is_some() {
        return None;
    }
    let (mt, mn) = f[3].split_once('.')?;
    Some(MEntry {
        e: Entry {
            kind: Kind::from_letter(f[0])?,
            mode: u32::from_str_radix(f[1], 8).ok()?,
            size: f[2].parse().ok()?,
            mtime: mt.parse().ok()?,
            mtime_nsec: mn.parse().ok()?,
            hash: unhex(f[4]),
            target: (!f[5].is_empty()).then(|| unesc(f[5])),
        },
        live: (f[6].parse().ok()?, f[7].parse().ok()?, f[8].parse().ok()?),
    })
}

/// A path of the tree as the manifest and the journal hold it: relative, no empty, `.` or `..`
/// component. Anything else in those files is damage, never a path to open.
pub(super) fn is_tree_path(p: &str) -> bool {
    // (Every line of the manifest is checked, so in one plain pass: an empty component is a `/`
    // at the start, at the end or after another; a `.` or `..` one starts with a `.`.)
    let b = p.as_bytes();
    let sep = |k: usize| b.get(k).is_none_or(|&c| c == b'/');
    let mut prev = b'/';
    for (k, &c) in b.iter().enumerate() {
        if prev == b'/'
            && (c == b'/' || (c == b'.' && (sep(k + 1) || (b[k + 1] == b'.' && sep(k + 2)))))
        {
            return false;
        }
        prev = c;
    }
    prev != b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn cfg(dir: &std::path::Path) -> Config {
        let c = Config {
            state_dir: dir.to_path_buf(),
            ..Default::default()
        };
        std::fs::create_dir_all(sync_dir(&c)).unwrap();
        c
    }

    pub(super) fn entry(size: u64) -> MEntry {
        MEntry {
            e: Entry {
                kind: Kind::File,
                mode: 0o644,
                size,
                mtime: 1,
                mtime_nsec: 0,
                hash: Some([7; 32]),
                target: None,
            },
            live: (1, 2, 3),
        }
    }

    #[test]
    fn written_lines_read_back_in_order_and_seek_finds_them() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let mut w = Writer::create(&c).unwrap();
        for (i, p) in ["a", "a.b", "a/b", "tab\there", "z"].iter().enumerate() {
            w.entry(p, &entry(i as u64)).unwrap();
        }
        w.commit().unwrap();
        let mut r = Reader::open(&c).unwrap();
        assert_eq!(r.seek("a/b").unwrap().unwrap().e.size, 2);
        assert!(r.seek("b").unwrap().is_none());
        assert_eq!(r.seek("tab\there").unwrap().unwrap().e.size, 3);
        assert!(r.next().unwrap());
        assert_eq!(r.path(), "z");
        assert!(!r.next().unwrap());
    }

    #[test]
    fn an_unsorted_or_damaged_manifest_is_an_error_naming_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let mut w = Writer::create(&c).unwrap();
        w.entry("b", &entry(1)).unwrap();
        w.entry("a", &entry(1)).unwrap();
        w.commit().unwrap();
        let mut r = Reader::open(&c).unwrap();
        assert!(r.next().unwrap());
        let e = r.next().unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("out of order"), "{e}");
        std::fs::write(Manifest::path(&c), "x\tf\n").unwrap();
        let mut r = Reader::open(&c).unwrap();
        assert!(r.next().unwrap());
        let e = r.entry().unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("damaged"), "{e}");
    }

    #[test]
    fn the_tree_path_check_is_the_component_rule() {
        let rule =
            |p: &str| !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        let parts = ["a", ".", "..", "...", ".a", "a.", "", "é", "b..c"];
        let mut n = 0;
        for x in parts {
            for y in parts {
                for z in parts {
                    for p in [
                        x.to_string(),
                        format!("{x}/{y}"),
                        format!("{x}/{y}/{z}"),
                        format!("{x}{y}/{z}"),
                        format!("/{x}"),
                        format!("{x}/"),
                    ] {
                        assert_eq!(is_tree_path(&p), rule(&p), "{p:?}");
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 1000);
    }

    #[test]
    fn image_fields_are_what_the_format_writes_and_a_line_holding_them_is_the_same_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let mut entries = Vec::new();
        for (mode, size, mtime, nsec) in [
            (0o644, 0, 0, 0),
            (0o7777, u64::MAX, i64::MIN, u32::MAX),
            (0, 12345, -1, 999_999_999),
            (0o755, 1, i64::MAX, 7),
        ] {
            for (kind, hash, target) in [
                (Kind::File, Some([0xa5; 32]), None),
                (Kind::File, None, None),
                (Kind::Dir, None, None),
                (Kind::Symlink, None, Some("../x\ty\\z".to_string())),
                (Kind::Symlink, None, Some(String::new())),
            ] {
                entries.push(Entry {
                    kind,
                    mode,
                    size,
                    mtime,
                    mtime_nsec: nsec,
                    hash,
                    target,
                });
            }
        }
        let mut w = Writer::create(&c).unwrap();
        for (k, e) in entries.iter().enumerate() {
            let m = MEntry {
                e: e.clone(),
                live: (k as u64, -(k as i64), k as i64),
            };
            let (mut ours, mut theirs) = (Vec::new(), String::new());
            image_fields(e, &mut ours);
            let _ = write!(
                theirs,
                "{}\t{:o}\t{}\t{}.{}\t{}\t",
                e.kind.letter(),
                e.mode,
                e.size,
                e.mtime,
                e.mtime_nsec,
                e.hash
                    .as_ref()
                    .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    .unwrap_or_else(|| "-".into())
            );
            if let Some(t) = &e.target {
                esc(t, &mut theirs);
            }
            assert_eq!(String::from_utf8(ours).unwrap(), theirs);
            w.entry(&format!("p{k:03}"), &m).unwrap();
        }
        w.raw(b"p999\tf\t644\t0\t0.0\t-\t\t1\tx\t3\n").unwrap();
        w.commit().unwrap();
        let mut r = Reader::open(&c).unwrap();
        let mut fields = Vec::new();
        for e in &entries {
            assert!(r.next().unwrap());
            fields.clear();
            image_fields(e, &mut fields);
            let parsed = r.entry().unwrap().e;
            // Equal bytes stand for an equal entry exactly when the fields round-trip.
            assert!(r.same_image_fields(&fields));
            assert_eq!(parsed == *e, fields_round_trip(e), "{e:?}");
        }
        // A damaged live field is never taken for the same entry (it is parsed: an error).
        assert!(r.next().unwrap());
        assert!(!r.same_image_fields(b"f\t644\t0\t0.0\t-\t"));
        assert!(r.entry().is_err());
        assert!(!r.next().unwrap());
    }

    #[test]
    fn lines_across_chunks_a_line_longer_than_a_chunk_and_a_last_line_without_newline_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let long = format!("m/{}", "x".repeat(CHUNK * 2 + 3));
        let mut paths: Vec<String> = (0..40_000).map(|k| format!("a/{k:06}")).collect();
        paths.push(long.clone());
        let mut w = Writer::create(&c).unwrap();
        for p in &paths {
            w.entry(p, &entry(p.len() as u64)).unwrap();
        }
        w.raw(b"\n# a comment\nz\tf\t644\t9\t1.0\t-\t\t1\t2\t3")
            .unwrap();
        w.commit().unwrap();
        let mut r = Reader::open(&c).unwrap();
        for p in &paths {
            assert!(r.next().unwrap());
            assert_eq!(r.path(), p);
            assert_eq!(r.entry().unwrap().e.size, p.len() as u64);
        }
        assert!(r.next().unwrap());
        assert_eq!((r.path(), r.entry().unwrap().e.size), ("z", 9));
        assert!(r.raw().ends_with(b"\t3"));
        assert!(!r.next().unwrap());
        assert!(!r.next().unwrap());
    }

    #[test]
    fn an_uncommitted_writer_leaves_the_old_manifest_and_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let mut w = Writer::create(&c).unwrap();
        w.entry("old", &entry(1)).unwrap();
        w.commit().unwrap();
        let mut w = Writer::create(&c).unwrap();
        w.entry("new", &entry(1)).unwrap();
        drop(w);
        let names: Vec<_> = std::fs::read_dir(sync_dir(&c))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["manifest.tsv"]);
        let mut r = Reader::open(&c).unwrap();
        assert!(r.next().unwrap());
        assert_eq!(r.path(), "old");
    }

    proptest::proptest! {
        /// The two halves of a split read every entry once, in order, the first half's all
        /// before the second's; a manifest under the size asked for is not split.
        #[test]
        fn a_split_manifest_reads_every_entry_once_in_order(
            paths in proptest::collection::btree_set("[a-c]{1,3}(/[a-c\\t]{1,4}){0,2}", 0..60),
            min in 0u64..4000,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let c = cfg(tmp.path());
            let mut w = Writer::create(&c).unwrap();
            for (i, p) in paths.iter().enumerate() {
                w.entry(p, &entry(i as u64)).unwrap();
            }
            w.commit().unwrap();
            let len = std::fs::metadata(Manifest::path(&c)).unwrap().len();
            let mut a = Reader::open(&c).unwrap();
            let b = a.split(min).unwrap();
            // (Lines are about the same length: with ten, the middle is not in the last one.)
            if len >= min && paths.len() >= 10 {
                proptest::prop_assert!(b.is_some());
            }
            let mut got = Vec::new();
            while a.next().unwrap() {
                got.push((a.path().to_string(), a.entry().unwrap().e.size));
            }
            let first_half = got.len();
            if let Some(mut b) = b {
                proptest::prop_assert!(len >= min);
                loop {
                    got.push((b.path().to_string(), b.entry().unwrap().e.size));
                    if !b.next().unwrap() {
                        break;
                    }
                }
                proptest::prop_assert!(first_half < got.len());
            }
            let want: Vec<_> = paths.iter().enumerate().map(|(i, p)| (p.clone(), i as u64)).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
