//! Progress counters that long work (the sync engine, the permissions walk) bumps and a display
//! on a terminal reads.
//!
//! They are plain atomics behind an `Arc`, passed down as data, so the low layers report
//! progress without knowing whether or how it is shown (the commands decide: only on a
//! terminal, never under systemd or with `-q`). Updating must stay a relaxed atomic add: this
//! module must never print, lock, block or allocate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What has been done so far. Every field only grows.
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries looked at (image entries compared, tree entries visited).
    pub scanned: AtomicU64,
    /// Entries written or changed.
    pub written: AtomicU64,
    /// Bytes of file content written.
    pub bytes: AtomicU64,
}

/// Where deep code reports progress; `None` when nobody watches.
pub type Sink = Option<Arc<Progress>>;

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    /// `n` more entries looked at.
    pub fn scanned(&self, n: u64) {
        self.scanned.fetch_add(n, Ordering::Relaxed);
    }

    /// One more entry written, with `bytes` of content.
    pub fn wrote(&self, bytes: u64) {
        self.written.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (scanned, written, bytes) now.
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.scanned.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}
