//! What the last `apply` and `sync` saw and did, kept in `state_dir/state.json`, and the lock
//! that keeps `apply`, `sync` and `reset` from running at once.
//!
//! The fact reads this file and nothing else, so it must always be whole: it is written to a
//! temporary file, synced, and renamed over the old one.

use crate::plan::{Component, ComponentPlan};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The whole state file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The tool version that wrote it.
    pub version: String,
    /// The switch as the last run saw it.
    pub enabled: bool,
    /// The last `apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply: Option<Run>,
    /// The last `sync` (or `reset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<Run>,
    /// Per component, what was last seen.
    #[serde(default)]
    pub components: BTreeMap<Component, ComponentState>,
}

/// One run of `apply` or `sync`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// RFC 3339, UTC.
    pub at: String,
    /// Seconds since the epoch, for metrics.
    pub unix: u64,
    pub duration_seconds: f64,
    /// `ok` or `error`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub components: Vec<Component>,
}

impl Run {
    /// A run that started at `started` and ends now, failed when `error` is given.
    pub fn ended(
        started: std::time::Instant,
        error: Option<String>,
        components: Vec<Component>,
    ) -> Run {
        let (at, unix) = now();
        Run {
            at,
            unix,
            duration_seconds: started.elapsed().as_secs_f64(),
            result: if error.is_none() { "ok" } else { "error" }.into(),
            error,
            components,
        }
    }
}

/// One component as last checked or applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ComponentState {
    /// RFC 3339, UTC.
    pub at: String,
    pub converged: bool,
    /// What the last check found pending before apply (exact totals by kind).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drift: BTreeMap<String, u64>,
    /// How many changes the last apply made.
    pub changed: u64,
    /// The component's own report: notes, observed values, metrics.
    #[serde(flatten)]
    pub plan: ComponentPlan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Current time as (RFC 3339 UTC seconds, seconds since the epoch).
pub fn now() -> (String, u64) {
    let t = SystemTime::now();
    let unix = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (humantime::format_rfc3339_seconds(t).to_string(), unix)
}

impl State {
    /// Converged: the last apply ran with the switch as `enabled` says now, succeeded, and left
    /// every component that `plan` covers by default converged. The fact, `status` and the
    /// metrics all use this one definition.
    pub fn converged(&self, enabled: bool) -> bool {
        self.why_not_converged(enabled).is_none()
    }

    /// The first reason the node is not converged, in words; `None` when it is.
    pub fn why_not_converged(&self, enabled: bool) -> Option<String> {
        let on_off = |b: bool| if b { "on" } else { "off" };
        if self.enabled != enabled {
            return Some(format!(
                "the switch is {} but the last apply ran with it {}",
                on_off(enabled),
                on_off(self.enabled)
            ));
        }
        match &self.last_apply {
            None => return Some("apply has not run yet".into()),
            Some(r) if r.result != "ok" => {
                return Some(format!(
                    "the last apply failed: {}",
                    r.error.as_deref().unwrap_or("unknown error")
                ))
            }
            Some(_) => {}
        }
        for c in Component::DEFAULT {
            match self.components.get(&c) {
                None => return Some(format!("{c} has never been applied")),
                Some(s) if !s.converged => return Some(format!("{c} is not converged")),
                Some(_) => {}
            }
        }
        None
    }

    /// Reads the state file; `Ok(None)` when there is none yet.
    pub fn read(path: &Path) -> Result<Option<State>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading the state file {}", path.display()))
            }
        };
        let state = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "parsing the state file {} (it is rewritten by the next apply or sync)",
                path.display()
            )
        })?;
        Ok(Some(state))
    }

    /// Reads the state file for an update: a corrupt one is replaced rather than fatal.
    pub fn read_or_default(path: &Path) -> State {
        match State::read(path) {
            Ok(Some(s)) => s,
            Ok(None) => State::default(),
            Err(e) => {
                log::warn!("{e:#}; starting from an empty state");
                State::default()
            }
        }
    }

    /// Writes the state file atomically (temp file, fsync, rename, fsync of the directory).
    pub fn write(&mut self, path: &Path) -> Result<()> {
        self.version = crate::VERSION.to_string();
        let mut json = serde_json::to_vec_pretty(self).context("serialising the state")?;
        json.push(b'\n');
        write_atomic(path, &json, 0o644)
            .with_context(|| format!("writing the state file {}", path.display()))
    }
}

/// Replaces `path` with `bytes` so that readers see the old or the new content, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("the path has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .context("the path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc_o_nofollow())
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// An exclusive `flock` on `state_dir/lock`, held while the value lives.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl Lock {
    /// Takes the lock, waiting up to `wait` for another run to finish. The lock file holds the
    /// holder's pid and start time, so the error can say who holds it.
    pub fn acquire(state_dir: &Path, what: &str, wait: Duration) -> Result<Lock> {
        use rustix::fs::{flock, FlockOperation};
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
        let path = state_dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc_o_nofollow())
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let deadline = Instant::now() + wait;
        let mut announced = false;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {
                    if Instant::now() >= deadline {
                        let holder = std::fs::read_to_string(&path).unwrap_or_default();
                        let holder = holder.trim();
                        bail!(
                            "{what}: another run ({}) holds the lock {}; waited {}s. Let it finish, or check it with `ps` if it seems stuck",
                            if holder.is_empty() { "unknown pid".to_string() } else { holder.to_string() },
                            path.display(),
                            wait.as_secs()
                        );
                    }
                    if !announced {
                        log::info!(
                            "{what}: waiting for another run to release {}",
                            path.display()
                        );
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("locking {}", path.display())),
            }
        }
        let (at, _) = now();
        file.set_len(0)?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0))?;
        write!(file, "pid {} since {at}", std::process::id())?;
        Ok(Lock { _file: file, path })
    }
}
