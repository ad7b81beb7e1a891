//! What the last sync wrote, kept in `state_dir/sync`: `manifest.tsv` (one line per path of the
//! tree: the image entry as written and the live inode/mtime/ctime right after; tab-separated,
//! with `\\`, tab and newline escaped and hashes in hex) and `last.json` ([`LastSync`]: the
//! image digest, which the unchanged-image check reads without parsing the manifest). It must
//! never write either file in place (a killed run leaves the old one whole), and never skip a
//! damaged manifest line: that is an error naming the file, the line and what to do.

use super::sync_dir;
use crate::config::Config;
use crate::image::{Entry, Kind};
use crate::tsv::{esc, unesc};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
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
        })
    }
}

/// One manifest line: the image entry as written, and the live stat right after writing.
#[derive(Clone, Debug)]
pub(super) struct MEntry {
    pub(super) e: Entry,
    pub(super) live: (u64, i64, i64),
}

#[derive(Clone, Debug, Default)]
pub(super) struct Manifest {
    pub(super) entries: BTreeMap<String, MEntry>,
}

fn hex(h: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

impl Manifest {
    const HEADER: &'static str = "# mw-experimental sync manifest v1: path kind mode size mtime.nsec blake3 target ino live_mtime_ns live_ctime_ns";

    fn path(cfg: &Config) -> PathBuf {
        sync_dir(cfg).join("manifest.tsv")
    }

    pub(super) fn read(cfg: &Config) -> Result<Manifest> {
        let p = Self::path(cfg);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("reading the manifest {}", p.display()))
            }
        };
        // The file is written sorted: collect, then build the map in bulk.
        let mut entries = Vec::with_capacity(text.len() / 150);
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (k, v) = parse_line(line).with_context(|| {
                format!(
                    "the manifest {} line {} is damaged; move it away and run `sync --force` (edits are backed up)",
                    p.display(),
                    i + 1
                )
            })?;
            entries.push((k, v));
        }
        Ok(Manifest {
            entries: entries.into_iter().collect(),
        })
    }

    pub(super) fn write(&self, cfg: &Config) -> Result<()> {
        let mut s = String::with_capacity(self.entries.len() * 160);
        s.push_str(Self::HEADER);
        s.push('\n');
        for (p, m) in &self.entries {
            line(p, m, &mut s);
        }
        // Temp file and rename (a killed run leaves the old manifest whole). No fsync: after a
        // power cut an old or empty manifest only makes the next sync compare content (live
        // entries equal to the image are adopted, others are kept as edits), never lose data.
        let path = Self::path(cfg);
        let tmp = path.with_extension(format!("tsv.tmp.{}", std::process::id()));
        let r = std::fs::write(&tmp, s.as_bytes()).and_then(|()| std::fs::rename(&tmp, &path));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.with_context(|| format!("writing the manifest {}", path.display()))
    }
}

/// One manifest line (with its newline): also the form of a journaled intent.
pub(super) fn line(p: &str, m: &MEntry, s: &mut String) {
    esc(p, s);
    let _ = write!(
        s,
        "\t{}\t{:o}\t{}\t{}.{}\t{}\t",
        m.e.kind.letter(),
        m.e.mode,
        m.e.size,
        m.e.mtime,
        m.e.mtime_nsec,
        m.e.hash.as_ref().map(hex).unwrap_or_else(|| "-".into())
    );
    if let Some(t) = &m.e.target {
        esc(t, s);
    }
    let _ = writeln!(s, "\t{}\t{}\t{}", m.live.0, m.live.1, m.live.2);
}

/// Parses what [`line`] wrote (without the newline); `None` when it is damaged.
pub(super) fn parse_line(line: &str) -> Option<(String, MEntry)> {
    let mut f = [""; 10];
    let mut it = line.split('\t');
    for slot in f.iter_mut() {
        *slot = it.next()?;
    }
    if it.next().is_some() {
        return None;
    }
    let (mt, mn) = f[4].split_once('.')?;
    let path = unesc(f[0]);
    if !is_tree_path(&path) {
        return None;
    }
    Some((
        path,
        MEntry {
            e: Entry {
                kind: Kind::from_letter(f[1])?,
                mode: u32::from_str_radix(f[2], 8).ok()?,
                size: f[3].parse().ok()?,
                mtime: mt.parse().ok()?,
                mtime_nsec: mn.parse().ok()?,
                hash: unhex(f[5]),
                target: (!f[6].is_empty()).then(|| unesc(f[6])),
            },
            live: (f[7].parse().ok()?, f[8].parse().ok()?, f[9].parse().ok()?),
        },
    ))
}

/// A path of the tree as the manifest and the journal hold it: relative, no empty, `.` or `..`
/// component. Anything else in those files is damage, never a path to open.
pub(super) fn is_tree_path(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}
