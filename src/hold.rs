//! Holds: a deployer pauses the code refresh without root, through a spool that root reads
//! without trusting it.
//!
//! The spool is `state_dir/holds/`, owned by root and the deployer group, mode 3770: setgid so
//! a hold file gets the group (members read each other's), sticky so a member can replace or
//! remove only files they own, and nothing else under `state_dir` is writable by members. A
//! member's `hold` writes `holds/<uid>.json` with their own credentials (temporary file, then
//! `rename`). The root reader ([`read`]) trusts the kernel, not the member: every entry is opened
//! with `O_NOFOLLOW|O_NONBLOCK` (a symlink fails, a FIFO never blocks), checked with `fstat` on
//! that descriptor (a regular file, one link, not writable by others, owned by the uid its name
//! says, at most [`MAX_BYTES`]) and read to at most that limit; the holder is the file's owner,
//! and a file whose content names someone else is ignored. Anything malformed, foreign or too
//! large is reported and ignored, never fatal. This module must never follow a symlink in the
//! spool, read more than [`MAX_BYTES`] of an entry, or write outside the spool. The writer and
//! the reader are one file on purpose (a little over 500 lines with the tests): they share the
//! format and the limits, and keeping them side by side keeps them in agreement.

use anyhow::{bail, Context, Result};
use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The largest hold file root reads; a larger one is reported and not read at all.
pub const MAX_BYTES: u64 = 4096;
/// How long a hold lasts when `--for` is not given.
pub const DEFAULT_FOR: Duration = Duration::from_secs(8 * 3600);
/// The longest a hold may last.
pub const MAX_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest reason, in characters.
pub const MAX_REASON: usize = 300;
/// The spool's mode: setgid (holds get the group), sticky (each member's own files only).
pub const SPOOL_MODE: u32 = 0o3770;
/// Entries of the spool looked at; more are reported, not opened.
const MAX_ENTRIES: usize = 1000;

/// The spool directory under `state_dir`.
pub fn spool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("holds")
}

/// A hold as the fact, `status`, the motd and `sync` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hold {
    /// The owner of the hold file, by name (`uid N` when the user database has no name).
    pub user: String,
    pub uid: u32,
    pub reason: String,
    /// RFC 3339, UTC.
    pub since: String,
    /// RFC 3339, UTC.
    pub until: String,
    #[serde(skip)]
    pub since_unix: u64,
    #[serde(skip)]
    pub until_unix: u64,
}

impl Hold {
    /// "held by alice since T until U: REASON", the line `sync` and the journal print.
    pub fn describe(&self) -> String {
        format!(
            "held by {} since {} until {}: {}",
            self.user,
            self.since,
            self.until,
            if self.reason.is_empty() {
                "no reason given"
            } else {
                &self.reason
            }
        )
    }
}

/// What a hold file holds. The user is written for people reading the spool; root checks it
/// against the file's owner and never uses it otherwise.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldFile {
    user: String,
    reason: String,
    /// Seconds since the epoch.
    since: u64,
    until: u64,
}

/// What [`read`] found in the spool.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spool {
    /// Holds in force now, oldest first.
    pub active: Vec<Hold>,
    /// Holds whose time is up (ignored; `release` or the next `hold` replaces them).
    pub expired: Vec<Hold>,
    /// Entries that are not valid holds, one sentence each (what, which file, why).
    pub ignored: Vec<String>,
}

impl Spool {
    pub fn is_held(&self) -> bool {
        !self.active.is_empty()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
        .to_string()
}

/// The user name of `uid`, or `uid N`.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

/// A reason is shown on other people's terminals: printable characters only, bounded.
fn check_reason(reason: &str) -> std::result::Result<(), String> {
    if reason.chars().count() > MAX_REASON {
        return Err(format!(
            "the reason is {} characters long; at most {MAX_REASON}",
            reason.chars().count()
        ));
    }
    if let Some(c) = reason.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the reason contains the control character {:?}; use printable text on one line",
            c
        ));
    }
    Ok(())
}

/// Reads every hold in the spool under `state_dir`, as root or as anyone who can read it.
/// Never fails: a spool that is missing means no holds; one that cannot be read is reported in
/// `ignored`.
pub fn read(state_dir: &Path) -> Spool {
    read_at(state_dir, unix_now())
}

fn read_at(state_dir: &Path, now: u64) -> Spool {
    let dir = spool_dir(state_dir);
    let mut spool = Spool::default();
    let fd = match crate::fs::at::open_dir_path(&dir) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return spool,
        Err(e) => {
            spool.ignored.push(format!(
                "the hold spool {} cannot be read ({e}); holds in it are not seen",
                dir.display()
            ));
            return spool;
        }
    };
    let names = match list(fd.as_fd()) {
        Ok(n) => n,
        Err(e) => {
            spool.ignored.push(format!(
                "listing the hold spool {}: {e}; holds in it are not seen",
                dir.display()
            ));
            return spool;
        }
    };
    if names.len() > MAX_ENTRIES {
        spool.ignored.push(format!(
            "the hold spool {} has {} entries; only the first {MAX_ENTRIES} were looked at",
            dir.display(),
            names.len()
        ));
    }
    for name in names.iter().take(MAX_ENTRIES) {
        if name.starts_with('.') {
            // A hold being written (temporary file), or a leftover of one that was killed.
            continue;
        }
        match read_one(fd.as_fd(), name, now) {
            Ok(h) if h.until_unix <= now => spool.expired.push(h),
            Ok(h) => spool.active.push(h),
            // The name is a member's: quoted and escaped, never sent raw to a terminal.
            Err(why) => spool
                .ignored
                .push(format!("ignored {}/{name:?}: {why}", dir.display())),
        }
    }
    spool.active.sort_by_key(|h| (h.since_unix, h.uid));
    spool
}

/// The entry names of a directory (not `.` and `..`), sorted; names that are not UTF-8 are
/// listed lossily (they are then reported as unexpected).
fn list(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            names.push(n);
            if names.len() > MAX_ENTRIES * 10 {
                break;
            }
        }
    }
    names.sort();
    Ok(names)
}

/// One entry, checked on its descriptor before a byte of it is read.
fn read_one(dir: BorrowedFd<'_>, name: &str, now: u64) -> std::result::Result<Hold, String> {
    let named_uid: u32 = name
        .strip_suffix(".json")
        .and_then(|u| u.parse().ok())
        .filter(|uid: &u32| name == format!("{uid}.json"))
        .ok_or("not a hold file (holds are named <uid>.json)")?;
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd: OwnedFd = match rfs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => {
            return Err("a symlink (holds must be regular files; not followed)".into())
        }
        Err(e) => return Err(format!("cannot open it ({e})")),
    };
    let st = rfs::fstat(&fd).map_err(|e| format!("fstat: {e}"))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(format!("not a regular file ({ft:?})"));
    }
    if st.st_nlink != 1 {
        return Err(format!(
            "has {} hard links (a hold is a file of its own)",
            st.st_nlink
        ));
    }
    let owner = st.st_uid;
    if owner != named_uid {
        return Err(format!(
            "named for uid {named_uid} but owned by {} (uid {owner})",
            user_name(owner)
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!(
            "writable by others than its owner {} (mode {:o})",
            user_name(owner),
            st.st_mode & 0o7777
        ));
    }
    if st.st_size as u64 > MAX_BYTES {
        return Err(format!(
            "{} bytes, over the {MAX_BYTES}-byte limit; not read",
            st.st_size
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading it: {e}"))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!("grew past the {MAX_BYTES}-byte limit while read"));
    }
    let f: HoldFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("not a valid hold ({e}); its owner can replace it with `mw-experimental hold` or remove it with `release`"))?;
    let user = user_name(owner);
    if f.user != user {
        return Err(format!(
            "claims to be by {:?} but is owned by {user}; a hold counts for its owner only",
            f.user.chars().take(64).collect::<String>()
        ));
    }
    check_reason(&f.reason)?;
    if f.until <= f.since || f.until - f.since > MAX_FOR.as_secs() + 60 {
        return Err(format!(
            "by {user}: its span {}..{} is not between 1 second and 7 days",
            f.since, f.until
        ));
    }
    if f.since > now + 300 {
        return Err(format!(
            "by {user}: starts in the future ({})",
            rfc3339(f.since)
        ));
    }
    Ok(Hold {
        user,
        uid: owner,
        reason: f.reason,
        since: rfc3339(f.since),
        until: rfc3339(f.until),
        since_unix: f.since,
        until_unix: f.until,
    })
}

/// Opens the spool for a member's write, with errors that say what to do.
fn open_spool_for_write(state_dir: &Path, group: &str) -> Result<OwnedFd> {
    let dir = spool_dir(state_dir);
    match crate::fs::at::open_dir_path(&dir) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) => bail!(
            "there is no hold spool {} yet: root makes it with `mw-experimental apply group` (Puppet runs it while the switch is on)",
            dir.display()
        ),
        Err(Errno::ACCESS | Errno::PERM) => bail!(
            "you ({}) may not use the hold spool {}: holds are for members of the deployer group {group} (`id` lists your groups; after being added, log in again)",
            user_name(rustix::process::geteuid().as_raw()),
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening the hold spool {}", dir.display())),
    }
}

/// Places (or replaces) the hold of the calling user: writes `holds/<uid>.json` with the
/// caller's own credentials. `duration` must be between 1 second and 7 days.
pub fn hold(state_dir: &Path, group: &str, reason: &str, duration: Duration) -> Result<Hold> {
    if duration.is_zero() || duration > MAX_FOR {
        bail!(
            "--for {}: a hold lasts between 1 second and 7 days (the default is 8h)",
            humantime::format_duration(duration)
        );
    }
    if let Err(why) = check_reason(reason) {
        bail!("--reason: {why}");
    }
    let uid = rustix::process::geteuid().as_raw();
    let user = user_name(uid);
    let since = unix_now();
    let until = since + duration.as_secs();
    let mut json = serde_json::to_vec(&HoldFile {
        user: user.clone(),
        reason: reason.to_string(),
        since,
        until,
    })?;
    json.push(b'\n');
    let dir = open_spool_for_write(state_dir, group)?;
    let name = format!("{uid}.json");
    let tmp = format!(".{uid}.{}.tmp", std::process::id());
    let path = spool_dir(state_dir).join(&name);
    let write = || -> Result<()> {
        let fd = rfs::openat(
            &dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o640),
        )
        .with_context(|| format!("creating {}", spool_dir(state_dir).join(&tmp).display()))?;
        rfs::fchmod(&fd, Mode::from_raw_mode(0o640))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(&json)?;
        f.sync_all()?;
        match rfs::renameat(&dir, &tmp, &dir, &name) {
            Ok(()) => Ok(()),
            Err(Errno::PERM | Errno::ACCESS) => bail!(
                "{} belongs to another user: the spool lets each user replace only their own hold; root can clear it with `mw-experimental release --all`",
                path.display()
            ),
            Err(e) => Err(e).with_context(|| format!("renaming the hold into {}", path.display())),
        }
    };
    if let Err(e) = write() {
        let _ = rfs::unlinkat(&dir, &tmp, AtFlags::empty());
        return Err(e);
    }
    let _ = rfs::fsync(&dir);
    Ok(Hold {
        user,
        uid,
        reason: reason.to_string(),
        since: rfc3339(since),
        until: rfc3339(until),
        since_unix: since,
        until_unix: until,
    })
}

/// Removes the calling user's hold; `Ok(false)` when they had none.
pub fn release(state_dir: &Path, group: &str) -> Result<bool> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = open_spool_for_write(state_dir, group)?;
    let name = format!("{uid}.json");
    match rfs::unlinkat(&dir, &name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| {
            format!(
                "removing your hold {}",
                spool_dir(state_dir).join(&name).display()
            )
        }),
    }
}

/// Root's `release --all`: removes every entry of the spool (holds, garbage, leftovers), never
/// following a symlink (`unlinkat` removes the link itself). Returns one line per entry removed,
/// and the entries it could not remove with why.
pub fn release_all(state_dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let path = spool_dir(state_dir);
    let dir = match crate::fs::at::open_dir_path(&path) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok((Vec::new(), Vec::new())),
        Err(e) => {
            return Err(e).with_context(|| format!("opening the hold spool {}", path.display()))
        }
    };
    let spool = read(state_dir);
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for name in list(dir.as_fd()).with_context(|| format!("listing {}", path.display()))? {
        let what = spool
            .active
            .iter()
            .chain(&spool.expired)
            .find(|h| format!("{}.json", h.uid) == name)
            .map(|h| h.describe())
            .unwrap_or_else(|| format!("{name} (not a valid hold)"));
        let r = match rfs::unlinkat(&dir, &name, AtFlags::empty()) {
            Err(Errno::ISDIR) => rfs::unlinkat(&dir, &name, AtFlags::REMOVEDIR),
            r => r,
        };
        match r {
            Ok(()) => removed.push(what),
            Err(e) => failed.push(format!("{}: {e}", path.join(&name).display())),
        }
    }
    let _ = rfs::fsync(&dir);
    Ok((removed, failed))
}

/// How the spool differs from root-owned, the deployer group's, mode 3770: one line per
/// difference, empty when it is right. Read-only.
pub fn check_spool(state_dir: &Path, gid: u32) -> Result<Vec<String>> {
    let path = spool_dir(state_dir);
    let st = match rfs::lstat(&path) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(vec![format!("create {} (mode 3770)", path.display())]),
        Err(e) => return Err(e).with_context(|| format!("lstat {}", path.display())),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        bail!(
            "the hold spool {} is not a directory; move it away and run `mw-experimental apply group`",
            path.display()
        );
    }
    let mut out = Vec::new();
    if st.st_uid != 0 || st.st_gid != gid {
        out.push(format!("owner {}:{} -> 0:{gid}", st.st_uid, st.st_gid));
    }
    if st.st_mode & 0o7777 != SPOOL_MODE {
        out.push(format!("mode {:o} -> {SPOOL_MODE:o}", st.st_mode & 0o7777));
    }
    Ok(out)
}

/// Makes the spool root's and the deployer group's, mode 3770 (root only). `state_dir` is
/// root's (members cannot write it), so the path is stable; the last component is still opened
/// without following a symlink and fixed through its descriptor.
pub fn ensure_spool(state_dir: &Path, gid: u32) -> Result<Vec<String>> {
    let todo = check_spool(state_dir, gid)?;
    if todo.is_empty() {
        return Ok(todo);
    }
    let path = spool_dir(state_dir);
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    match rfs::mkdir(&path, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    let fd = crate::fs::at::open_dir_path(&path)
        .with_context(|| format!("opening the hold spool {}", path.display()))?;
    rfs::fchown(
        &fd,
        Some(rustix::fs::Uid::ROOT),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .with_context(|| format!("chown 0:{gid} {}", path.display()))?;
    rfs::fchmod(&fd, Mode::from_raw_mode(SPOOL_MODE))
        .with_context(|| format!("chmod {SPOOL_MODE:o} {}", path.display()))?;
    Ok(todo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_with_control_characters_or_too_long_are_refused() {
        assert!(check_reason("testing Special:Version, back at 3pm").is_ok());
        assert!(check_reason("a\x1b[2Jb").is_err());
        assert!(check_reason("two\nlines").is_err());
        assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
    }

    /// Runs as root (the tests do): hold files owned by uid 0.
    #[test]
    fn the_reader_takes_valid_and_expired_holds_and_ignores_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_dir(dir.path());
        std::fs::create_dir(&spool).unwrap();
        let file = |name: &str, since: u64, until: u64| {
            let f = HoldFile {
                user: user_name(0),
                reason: "r".into(),
                since,
                until,
            };
            std::fs::write(spool.join(name), serde_json::to_vec(&f).unwrap()).unwrap();
        };
        file("0.json", 1000, 5000);
        file("+0.json", 1000, 5000);
        file(".0.123.tmp", 1000, 5000);
        let s = read_at(dir.path(), 2000);
        assert_eq!(s.active.len(), 1, "{s:?}");
        assert_eq!(s.active[0].uid, 0);
        assert_eq!(s.ignored.len(), 1, "{s:?}");
        assert!(
            s.ignored[0].contains("\"+0.json\": not a hold file"),
            "{s:?}"
        );
        let later = read_at(dir.path(), 6000);
        assert_eq!((later.active.len(), later.expired.len()), (0, 1));
        file("0.json", 1000, 1000 + MAX_FOR.as_secs() + 3600);
        assert!(read_at(dir.path(), 2000).ignored[1].contains("7 days"));
    }

    #[test]
    fn describe_says_who_since_until_and_why() {
        let h = Hold {
            user: "alice".into(),
            uid: 1000,
            reason: String::new(),
            since: rfc3339(0),
            until: rfc3339(3600),
            since_unix: 0,
            until_unix: 3600,
        };
        assert_eq!(
            h.describe(),
            "held by alice since 1970-01-01T00:00:00Z until 1970-01-01T01:00:00Z: no reason given"
        );
    }
}
