//! What the last sync wrote, kept in `state_dir/sync`: `manifest.tsv` (one line per path of the
//! tree: the image entry as written and the live inode/mtime/ctime right after; tab-separated,
//! with `\\`, tab and newline escaped and hashes in hex) and `last.json` ([`LastSync`]: the
//! image digest, which the unchanged-image check reads without parsing the manifest). It must
//! never write either file in place (a killed run leaves the old one whole), never skip a
//! damaged or out-of-order manifest line (that is an error naming the file, the line and what to
//! do), and never hold the whole manifest: it is read with a [`Reader`] and written with a
//! [`Writer`], a line at a time in path order, because at a million entries it is ~150 MB.

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
fn hex_into(h: &[u8; 32], s: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 64];
    for (pair, x) in b.chunks_exact_mut(2).zip(h) {
        pair[0] = DIGITS[(x >> 4) as usize];
        pair[1] = DIGITS[(x & 15) as usize];
    }
    s.push_str(std::str::from_utf8(&b).unwrap_or_default());
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
struct Manifest;

impl Manifest {
    const HEADER: &'static str = "# mw-experimental sync manifest v1: path kind mode size mtime.nsec blake3 target ino live_mtime_ns live_ctime_ns";

    fn path(cfg: &Config) -> PathBuf {
        sync_dir(cfg).join("manifest.tsv")
    }
}

/// The manifest read one line at a time, in its order (sorted by path), so a run never holds
/// the whole file: a million-entry manifest is about 150 MB of text. It is read in large chunks
/// and split on newlines in place; [`Reader::next`] checks each line's path (UTF-8, a path of
/// the tree, after the one before), the other fields are checked where they are used
/// ([`Reader::entry`], [`Reader::same_image_fields`]).
pub(super) struct Reader {
    file: Option<std::fs::File>,
    name: PathBuf,
    line_no: usize,
    /// Read from the file: `buf[..filled]`; the current line is `buf[start..end]` (with its
    /// newline, but for a last line without one).
    buf: Vec<u8>,
    filled: usize,
    start: usize,
    end: usize,
    /// The file has no more to read.
    eof: bool,
    path: String,
    /// The previous path's buffer, reused.
    spare: String,
}

/// How much of the manifest a [`Reader`] reads at a time (a longer line grows it).
const CHUNK: usize = 1 << 20;

impl Reader {
    /// The manifest of the last sync (none yet: an empty reader).
    pub(super) fn open(cfg: &Config) -> Result<Reader> {
        let name = Manifest::path(cfg);
        let file = match std::fs::File::open(&name) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("reading the manifest {}", name.display()))
            }
        };
        Ok(Reader {
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
            path: String::new(),
            spare: String::new(),
        })
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
        use std::io::Read as _;
        let Some(f) = &mut self.file else {
            return Ok(false);
        };
        self.buf.copy_within(self.end..self.filled, 0);
        self.filled -= self.end;
        self.start = 0;
        self.end = 0;
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match f.read(&mut self.buf[self.filled..]) {
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

    /// The current line's fields after the path (without the newline); `None` if it has none.
    fn rest(&self) -> Option<&[u8]> {
        let line = self.raw();
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        memchr::memchr(b'\t', body).map(|k| &body[k + 1..])
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

    /// Whether the current line holds, byte for byte, the image fields `fields` (as
    /// [`image_fields`] wrote them for an entry) and well-formed live fields: then
    /// [`Reader::entry`] would parse to that entry (when [`fields_round_trip`] says so), which
    /// this settles without parsing. `false` says nothing: parse it.
    pub(super) fn same_image_fields(&self, fields: &[u8]) -> bool {
        let Some(live) = self
            .rest()
            .and_then(|r| r.strip_prefix(fields))
            .and_then(|r| r.strip_prefix(b"\t"))
        else {
            return false;
        };
        let mut it = live.split(|&b| b == b'\t');
        let (Some(ino), Some(mt), Some(ct), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return false;
        };
        // The checks `parse_rest` makes of the live fields.
        fn num<T: std::str::FromStr>(f: &[u8]) -> bool {
            std::str::from_utf8(f).is_ok_and(|f| f.parse::<T>().is_ok())
        }
        num::<u64>(ino) && num::<i64>(mt) && num::<i64>(ct)
    }

    /// The entry at `p`, if the manifest has it; `p` must not be before the last one asked
    /// for (the engine asks in path order).
    pub(super) fn seek(&mut self, p: &str) -> Result<Option<MEntry>> {
        while self.file.is_some() && (self.path.is_empty() || self.path.as_str() < p) {
            if !self.next()? {
                return Ok(None);
            }
        }
        if self.file.is_some() && self.path == p {
            return self.entry().map(Some);
        }
        Ok(None)
    }
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

    /// Flushes and renames it into place. No fsync: after a power cut an old or empty manifest
    /// only makes the next sync compare content (live entries equal to the image are adopted,
    /// others are kept as edits), never lose data.
    pub(super) fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("committed once");
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|_| std::fs::rename(&self.tmp, &self.path))
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
    image_fields(&m.e, s);
    let _ = writeln!(s, "\t{}\t{}\t{}", m.live.0, m.live.1, m.live.2);
}

/// The image fields of a manifest line (kind, mode, size, mtime.nsec, hash, target: what
/// [`line`] writes between the path and the live fields), appended to `s`.
pub(super) fn image_fields(e: &Entry, s: &mut String) {
    let _ = write!(
        s,
        "{}\t{:o}\t{}\t{}.{}\t",
        e.kind.letter(),
        e.mode,
        e.size,
        e.mtime,
        e.mtime_nsec
    );
    match &e.hash {
        Some(h) => hex_into(h, s),
        None => s.push('-'),
    }
    s.push('\t');
    if let Some(t) = &e.target {
        esc(t, s);
    }
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
    !p.is_empty()
        && p.as_bytes()
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path) -> Config {
        let c = Config {
            state_dir: dir.to_path_buf(),
            ..Default::default()
        };
        std::fs::create_dir_all(sync_dir(&c)).unwrap();
        c
    }

    fn entry(size: u64) -> MEntry {
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
}
