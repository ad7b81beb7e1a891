//! The permission policy: owner, group, mode and POSIX ACLs over the code tree, so that every
//! engineer of the deployer group can edit every file, files they create stay group-writable,
//! and the pod's php-fpm (uid 33, "other") can read everything.
//!
//! This module holds the policy (what each entry must look like, decided from one `fstat` and
//! its ACL attributes, as pure functions a unit test can drive) and the writes that converge one
//! open entry through its file descriptor. Two callers use it: the `permissions` component
//! (over the whole tree, through [`crate::fs::walk`]) and `sync` (for each entry it writes:
//! made with [`Policy::mode_for`], so that the parent's default ACL already gives what the
//! policy wants, then checked on its descriptor with [`fix_fd`], or by name with [`fix_at`]).
//! It never opens anything by a path from the top and never walks.
//!
//! (Over 500 lines with its tests: the policy, the writes that converge it and the tests that
//! check both on a real file system are one unit.)
//!
//! The policy, exactly (the README's "Permissions policy" section says the same):
//!
//! * root directory (`code.path`): owner `code.owner`, group `deployers.gid`, mode exactly
//!   `code.mode` (the mode's group bits are the ACL mask), access ACL entry
//!   `group:<gid>:rwx`, default ACL as for every directory.
//! * every directory: group `deployers.gid`; setgid bit set; `other` gets at least `r-x`;
//!   access ACL `group:<gid>:rwx` and `mask::rwx` (other entries kept);
//!   default ACL exactly `user::rwx group::r-x group:<gid>:rwx mask::rwx other::r-x`.
//! * every regular file with one link: group unchanged; `other` gets at least `r--`;
//!   `group:<gid>` is effectively (entry AND mask) `rw-`, or `rwx` when the owner has `x`;
//!   when it is not, the entry is set to exactly that and the mask widened to include it.
//!   A file created by `touch` under the default ACL (`group:<gid>:rwx`, `mask::rw-`) is
//!   therefore already converged.
//! * never changed: file owners (except the root directory), symlinks (never followed),
//!   regular files with more than one link, FIFOs, sockets, devices, anything on another
//!   filesystem; the group, setuid and setgid bits of files.

use crate::config::Config;
use crate::fs::acl::{self, Acl, Tag, R, RWX, W, X};
use crate::fs::at::{self, Regular};
use crate::plan::Change;
use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, XattrFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

/// The resolved policy (uids and gids looked up), for the walk and for `sync`.
#[derive(Clone, Debug)]
pub struct Policy {
    pub root: std::path::PathBuf,
    pub owner_uid: u32,
    pub gid: u32,
    pub root_mode: u32,
}

impl Policy {
    pub fn from_config(cfg: &Config) -> Result<Policy> {
        let owner = &cfg.code.owner;
        let user = nix::unistd::User::from_name(owner)
            .with_context(|| format!("looking up code.owner {owner:?} in the user database"))?;
        let Some(user) = user else {
            bail!(
                "code.owner: user {owner:?} does not exist, so {} cannot be owned by it; \
                 create the user (Puppet manages it with the deployment server's users) or \
                 set code.owner to an existing user",
                cfg.code.path.display()
            );
        };
        crate::accounts::deployer_group(cfg).with_context(|| {
            format!(
                "refusing to grant {} to deployers.gid {}",
                cfg.code.path.display(),
                cfg.deployers.gid
            )
        })?;
        Ok(Policy {
            root: cfg.code.path.clone(),
            owner_uid: user.uid.as_raw(),
            gid: cfg.deployers.gid,
            root_mode: cfg.code_mode(),
        })
    }

    /// The permission bits (`st_mode & 0o7777`) an entry of the image's `mode` has once the
    /// policy is applied to it. `sync` creates what it writes with these bits: under a
    /// directory's default ACL the inherited access ACL then already gives the group what the
    /// policy wants (its mask is the mode's group bits), so no ACL write follows.
    pub fn mode_for(&self, dir: bool, mode: u32) -> u32 {
        let kind = if dir { Kind::Dir } else { Kind::File };
        let perm = mode & 0o7777;
        let fix = evaluate(self, kind, perm, self.owner_uid, self.gid, None, None);
        match (fix.mode, &fix.acl) {
            (Some((_, m)), _) => m,
            (None, Some((_, a))) => (perm & 0o7000) | a.mode_bits(),
            (None, None) => perm,
        }
    }

    /// The default ACL every directory gets, so new files and directories inherit
    /// `group:<gid>:rwx` (a file created with mode 0666 ends up with `mask::rw-`).
    pub fn default_acl(&self) -> Acl {
        let mut a = Acl::from_mode(0o755);
        a.set(Tag::Group, self.gid, RWX);
        a.set(Tag::Mask, 0, RWX);
        a
    }
}

/// Which rules apply to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Root,
    Dir,
    File,
}

/// The kinds of drift, as counted in the plan.
pub(crate) const KINDS: [&str; 5] = ["owner", "group", "mode", "acl", "default_acl"];

/// What one entry needs; `None` everywhere means converged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fix {
    pub owner: Option<(u32, u32)>,
    pub group: Option<(u32, u32)>,
    /// (from, to): the whole `st_mode & 0o7777`.
    pub mode: Option<(u32, u32)>,
    pub acl: Option<(Acl, Acl)>,
    pub default_acl: Option<(Option<Acl>, Acl)>,
}

impl Fix {
    pub fn is_empty(&self) -> bool {
        *self == Fix::default()
    }

    /// Adds one to `counts[i]` for each kind of [`KINDS`] this fix has.
    pub fn count(&self, counts: &mut [u64; 5]) {
        let has = [
            self.owner.is_some(),
            self.group.is_some(),
            self.mode.is_some(),
            self.acl.is_some(),
            self.default_acl.is_some(),
        ];
        for (c, h) in counts.iter_mut().zip(has) {
            *c += h as u64;
        }
    }

    /// The plan's `Change`s for this entry, one per kind.
    pub fn changes(&self, rel: &str) -> Vec<Change> {
        let mut out = Vec::new();
        if let Some((a, b)) = self.owner {
            out.push(Change::new("chown", rel, format!("uid {a} -> {b}")));
        }
        if let Some((a, b)) = self.group {
            out.push(Change::new("chgrp", rel, format!("gid {a} -> {b}")));
        }
        if let Some((a, b)) = self.mode {
            out.push(Change::new("chmod", rel, format!("{a:04o} -> {b:04o}")));
        }
        if let Some((a, b)) = &self.acl {
            out.push(Change::new(
                "set-acl",
                rel,
                format!("{} -> {}", a.to_text(), b.to_text()),
            ));
        }
        if let Some((a, b)) = &self.default_acl {
            let from = a.as_ref().map_or("none".to_string(), Acl::to_text);
            out.push(Change::new(
                "set-default-acl",
                rel,
                format!("{from} -> {}", b.to_text()),
            ));
        }
        out
    }
}

const S_ISGID: u32 = 0o2000;

/// The policy's verdict on one entry, from its `stat` and its ACL attributes (`None`: the
/// attribute is absent). Pure: the unit tests drive it directly.
pub(crate) fn evaluate(
    p: &Policy,
    kind: Kind,
    st_mode: u32,
    uid: u32,
    gid: u32,
    access: Option<&Acl>,
    default: Option<&Acl>,
) -> Fix {
    let perm = st_mode & 0o7777;
    let cur = access.cloned().unwrap_or_else(|| Acl::from_mode(perm));
    let mut want = cur.clone();
    let mut fix = Fix::default();
    if kind == Kind::Root && uid != p.owner_uid {
        fix.owner = Some((uid, p.owner_uid));
    }
    // Directories carry the deployer group (and setgid, so new entries inherit it). Files keep
    // theirs: the `group:<gid>` entry gives the access, and a chown per file would double
    // the writes of a first apply for nothing.
    if kind != Kind::File && gid != p.gid {
        fix.group = Some((gid, p.gid));
    }
    let other = cur.get(Tag::Other, 0).unwrap_or(0);
    let mut special = perm & 0o7000;
    match kind {
        Kind::Root => {
            let m = p.root_mode;
            want.set(Tag::UserObj, 0, ((m >> 6) & 7) as u16);
            want.set(Tag::Other, 0, (m & 7) as u16);
            want.set(Tag::Group, p.gid, RWX);
            want.set(Tag::Mask, 0, ((m >> 3) & 7) as u16);
            special = m & 0o7000;
        }
        Kind::Dir => {
            if cur.effective_group(p.gid) != Some(RWX) {
                want.set(Tag::Group, p.gid, RWX);
                want.set(Tag::Mask, 0, RWX);
            }
            want.set(Tag::Other, 0, other | R | X);
            special |= S_ISGID;
        }
        Kind::File => {
            let wanted = R | W | if perm & 0o100 != 0 { X } else { 0 };
            if cur.effective_group(p.gid) != Some(wanted) {
                want.set(Tag::Group, p.gid, wanted);
                want.set(Tag::Mask, 0, cur.group_class() | wanted);
            }
            want.set(Tag::Other, 0, other | R);
        }
    }
    // What the mode will be after the ACL write, to see whether a chmod remains.
    let mut predicted = perm;
    let named = |a: &Acl| -> Vec<acl::Entry> {
        a.entries
            .iter()
            .copied()
            .filter(|e| !matches!(e.tag, Tag::UserObj | Tag::Other))
            .collect()
    };
    if named(&want) != named(&cur) {
        predicted = (predicted & 0o7000) | want.mode_bits();
        fix.acl = Some((cur, want.clone()));
    }
    let target = special | want.mode_bits();
    if predicted != target {
        fix.mode = Some((perm, target));
    }
    if kind != Kind::File {
        let wd = p.default_acl();
        if default != Some(&wd) {
            fix.default_acl = Some((default.cloned(), wd));
        }
    }
    fix
}

/// Reads one ACL attribute from `fd`; `None` when it is absent.
pub(crate) fn read_acl(fd: BorrowedFd<'_>, name: &str) -> rustix::io::Result<Option<Acl>> {
    let mut buf = [0u8; 256];
    let bytes = match rustix::fs::fgetxattr(fd, name, &mut buf[..]) {
        Ok(n) => buf[..n].to_vec(),
        Err(Errno::NODATA) => return Ok(None),
        Err(Errno::RANGE) => {
            let n = rustix::fs::fgetxattr_query(fd, name)?;
            let mut v = vec![0u8; n + 64];
            let n = rustix::fs::fgetxattr(fd, name, &mut v[..])?;
            v.truncate(n);
            v
        }
        Err(e) => return Err(e),
    };
    // A damaged attribute is treated as drift (rewritten by apply), not as a fatal error.
    Ok(Acl::decode(&bytes).ok())
}

/// Reads what the policy needs from an open entry and decides.
pub(crate) fn examine(
    p: &Policy,
    fd: BorrowedFd<'_>,
    st: &rustix::fs::Stat,
    kind: Kind,
) -> rustix::io::Result<Fix> {
    let access = read_acl(fd, acl::ACCESS)?;
    let default = if kind == Kind::File {
        None
    } else {
        read_acl(fd, acl::DEFAULT)?
    };
    Ok(evaluate(
        p,
        kind,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        access.as_ref(),
        default.as_ref(),
    ))
}

/// Converges one open entry: owner and group, then the access ACL (which also sets the rwx
/// bits), then the mode (special bits), then the default ACL. Each only when it differs.
pub(crate) fn write_fix(fd: BorrowedFd<'_>, fix: &Fix) -> rustix::io::Result<()> {
    if fix.owner.is_some() || fix.group.is_some() {
        rustix::fs::fchown(
            fd,
            fix.owner.map(|(_, u)| rustix::fs::Uid::from_raw(u)),
            fix.group.map(|(_, g)| rustix::fs::Gid::from_raw(g)),
        )?;
    }
    if let Some((_, a)) = &fix.acl {
        rustix::fs::fsetxattr(fd, acl::ACCESS, &a.encode(), XattrFlags::empty())?;
    }
    if let Some((_, m)) = fix.mode {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m))?;
    }
    if let Some((_, a)) = &fix.default_acl {
        rustix::fs::fsetxattr(fd, acl::DEFAULT, &a.encode(), XattrFlags::empty())?;
    }
    Ok(())
}

/// Applies the policy to the one entry `name` in the directory `dir` (used by `sync` for the
/// entries it writes). Never follows a symlink; skips hard-linked files, symlinks, FIFOs,
/// sockets and devices (returns `Ok`: they are not ours to change).
pub fn fix_at(policy: &Policy, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let what = || format!("applying the permission policy to {name:?}");
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).with_context(what)?;
    let (kind, fd, st) = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => match at::open_dir_at(dir, name) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).with_context(what)?;
                (Kind::Dir, fd, st)
            }
            // Replaced by a symlink (or something else) since the stat: not ours.
            Err(Errno::LOOP | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(e).with_context(what),
        },
        FileType::RegularFile => match at::open_regular(dir, name, None).with_context(what)? {
            Regular::Open(fd, st) => (Kind::File, fd, st),
            _ => return Ok(()),
        },
        _ => return Ok(()),
    };
    let fix = examine(policy, fd.as_fd(), &st, kind).with_context(what)?;
    if !fix.is_empty() {
        write_fix(fd.as_fd(), &fix).with_context(what)?;
    }
    Ok(())
}

/// [`fix_at`] for a regular file the caller has just written and holds open, before it has a
/// name in the tree (an unnamed `O_TMPFILE` inode or a journaled temp name of the sync): no
/// lookup, no second open, and the file has its permissions from its first moment in place.
/// Also for a directory `sync` has just made and opened. Whether it changed anything (the
/// caller's `st` is then stale).
pub fn fix_fd(policy: &Policy, fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> Result<bool> {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        _ => return Ok(false),
    };
    let what = || "applying the permission policy to an entry being written".to_string();
    let fix = examine(policy, fd, st, kind).with_context(what)?;
    if fix.is_empty() {
        return Ok(false);
    }
    write_fix(fd, &fix).with_context(what)?;
    Ok(true)
}

/// The path a report shows for an entry.
pub(crate) fn display_rel(root: &std::path::Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::OFlags;

    fn pol() -> Policy {
        Policy {
            root: "/x".into(),
            owner_uid: 500,
            gid: 705,
            root_mode: 0o2775,
        }
    }

    #[test]
    fn plain_file_gets_group_rw_and_mask() {
        let f = evaluate(&pol(), Kind::File, 0o100644, 1000, 1000, None, None);
        assert_eq!(f.group, None, "files keep their group");
        let (_, want) = f.acl.clone().unwrap();
        assert_eq!(want.to_text(), "u::rw-,g::r--,g:705:rw-,m::rw-,o::r--");
        assert_eq!(f.mode, None, "the ACL write sets 0664 itself");
        assert_eq!(f.owner, None, "engineers keep their files");
    }

    #[test]
    fn executable_file_gets_group_rwx_and_other_read() {
        let f = evaluate(&pol(), Kind::File, 0o100700, 1000, 705, None, None);
        let (_, want) = f.acl.clone().unwrap();
        assert_eq!(want.to_text(), "u::rwx,g::---,g:705:rwx,m::rwx,o::r--");
    }

    #[test]
    fn file_touched_under_the_default_acl_is_converged() {
        // What the kernel makes of the default ACL for open(O_CREAT, 0666).
        let mut a = Acl::from_mode(0o664);
        a.set(Tag::GroupObj, 0, R | X);
        a.set(Tag::Group, 705, RWX);
        a.set(Tag::Mask, 0, R | W);
        let f = evaluate(&pol(), Kind::File, 0o100664, 1000, 705, Some(&a), None);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn chmod_by_an_engineer_is_drift_fixed_by_the_mask() {
        let mut a = Acl::from_mode(0o644);
        a.set(Tag::Group, 705, R | W);
        a.set(Tag::Mask, 0, R);
        let f = evaluate(&pol(), Kind::File, 0o100644, 1000, 705, Some(&a), None);
        assert_eq!(
            f.acl.unwrap().1.to_text(),
            "u::rw-,g::r--,g:705:rw-,m::rw-,o::r--"
        );
        assert_eq!(f.mode, None);
    }

    #[test]
    fn directory_gets_setgid_acl_and_default() {
        let f = evaluate(&pol(), Kind::Dir, 0o040750, 1000, 705, None, None);
        assert_eq!(
            f.acl.clone().unwrap().1.to_text(),
            "u::rwx,g::r-x,g:705:rwx,m::rwx,o::r-x"
        );
        assert_eq!(f.mode, Some((0o750, 0o2775)));
        assert_eq!(
            f.default_acl.unwrap().1.to_text(),
            "u::rwx,g::r-x,g:705:rwx,m::rwx,o::r-x"
        );
    }

    #[test]
    fn converged_directory_needs_nothing() {
        let p = pol();
        let mut a = Acl::from_mode(0o775);
        a.set(Tag::Group, 705, RWX);
        a.set(Tag::Mask, 0, RWX);
        let f = evaluate(
            &p,
            Kind::Dir,
            0o042775,
            1000,
            705,
            Some(&a),
            Some(&p.default_acl()),
        );
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn root_gets_owner_and_exact_mode() {
        let f = evaluate(&pol(), Kind::Root, 0o040700, 0, 0, None, None);
        assert_eq!(f.owner, Some((0, 500)));
        assert_eq!(f.mode, Some((0o700, 0o2775)));
    }

    #[test]
    fn setuid_file_keeps_its_bits_and_group() {
        let f = evaluate(&pol(), Kind::File, 0o104755, 1000, 1000, None, None);
        assert_eq!(f.mode, None, "{f:?}");
        assert_eq!(f.group, None, "{f:?}");
    }

    /// `fix_at` is what `sync` calls for each entry it writes: it converges a file and a
    /// directory in place, and leaves symlinks and hard-linked files exactly as they are.
    #[test]
    fn fix_at_converges_one_entry_and_leaves_links_alone() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("f.php"), "x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("outside"), "x").unwrap();
        std::fs::hard_link(d.join("outside"), d.join("hard.php")).unwrap();
        std::os::unix::fs::symlink(d.join("outside"), d.join("link")).unwrap();
        let ctime = |n: &str| {
            let m = std::fs::symlink_metadata(d.join(n)).unwrap();
            (m.ctime(), m.ctime_nsec())
        };
        let (hard, link) = (ctime("hard.php"), ctime("link"));
        let dir = rustix::fs::open(d, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let p = pol();
        for name in ["f.php", "sub", "hard.php", "link"] {
            fix_at(&p, dir.as_fd(), OsStr::new(name)).unwrap();
        }
        let check = |name: &str, kind: Kind| {
            let fd = rustix::fs::openat(&dir, name, OFlags::RDONLY, Mode::empty()).unwrap();
            let st = rustix::fs::fstat(&fd).unwrap();
            examine(&p, fd.as_fd(), &st, kind).unwrap()
        };
        assert!(check("f.php", Kind::File).is_empty());
        assert!(check("sub", Kind::Dir).is_empty());
        assert_eq!(ctime("hard.php"), hard, "hard-linked file was written");
        assert_eq!(ctime("link"), link, "symlink was written");
        assert!(!check("hard.php", Kind::File).is_empty());
    }

    #[test]
    fn entries_created_with_mode_for_under_the_default_acl_need_no_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let top = rustix::fs::open(
            tmp.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let p = pol();
        rustix::fs::mkdirat(&top, "sub", Mode::from_raw_mode(0o755)).unwrap();
        fix_at(&p, top.as_fd(), OsStr::new("sub")).unwrap();
        let dir = at::open_dir_at(top.as_fd(), "sub").unwrap();
        for (i, mode) in [0o644, 0o755, 0o600, 0o700, 0o444, 0o1644]
            .into_iter()
            .enumerate()
        {
            let name = format!("f{i}");
            let m = p.mode_for(false, mode);
            let fd = rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                Mode::from_raw_mode(m),
            )
            .unwrap();
            let st = rustix::fs::fstat(&fd).unwrap();
            assert_eq!(st.st_mode & 0o7777, m, "file {mode:o} created as {m:o}");
            let fix = examine(&p, fd.as_fd(), &st, Kind::File).unwrap();
            assert!(fix.is_empty(), "file {mode:o} created as {m:o}: {fix:?}");
            // The same file created with the image's own mode does need the ACL write.
            if mode & 0o070 != 0o060 && mode & 0o070 != 0o070 {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).unwrap();
                let st = rustix::fs::fstat(&fd).unwrap();
                assert!(!examine(&p, fd.as_fd(), &st, Kind::File).unwrap().is_empty());
            }
        }
        for (i, mode) in [0o755, 0o700, 0o750].into_iter().enumerate() {
            let name = format!("d{i}");
            let m = p.mode_for(true, mode);
            assert_eq!(m & 0o2000, 0o2000, "directories carry setgid");
            // (Made without it: the parent's passes down.)
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(m & 0o1777)).unwrap();
            let fd = at::open_dir_at(dir.as_fd(), name.as_str()).unwrap();
            let st = rustix::fs::fstat(&fd).unwrap();
            assert_eq!(
                st.st_mode & 0o7777,
                m,
                "directory {mode:o} created as {m:o}"
            );
            let fix = examine(&p, fd.as_fd(), &st, Kind::Dir).unwrap();
            assert!(
                fix.is_empty(),
                "directory {mode:o} created as {m:o}: {fix:?}"
            );
            assert!(!fix_fd(&p, fd.as_fd(), &st).unwrap(), "nothing to change");
        }
    }
}
