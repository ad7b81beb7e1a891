//! Helpers for the group and permission tests: temporary groups and users that are deleted
//! when the test ends (pass or fail), free gids, `getfacl` parsing, and inode snapshots to
//! prove that nothing was written.

#![allow(dead_code)]

use crate::support::*;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static RESERVED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// A gid that no group holds and no other test of this run has taken.
pub fn free_gid() -> u32 {
    let mut r = RESERVED.lock().unwrap();
    let taken = r.get_or_insert_with(HashSet::new);
    let start = 40_000 + (std::process::id() % 10_000) * 2;
    for gid in (start..60_000).chain(40_000..start) {
        if taken.contains(&gid) {
            continue;
        }
        let free = !Command::new("getent")
            .args(["group", &gid.to_string()])
            .output()
            .expect("getent")
            .status
            .success();
        if free {
            taken.insert(gid);
            return gid;
        }
    }
    panic!("no free gid in 40000..60000");
}

/// Deletes the group by name when dropped (whoever created it: the test or `apply`).
pub struct GroupGuard {
    pub name: String,
    pub gid: u32,
}

impl GroupGuard {
    /// A unique name and a free gid; the group is not created.
    pub fn reserve() -> GroupGuard {
        GroupGuard {
            name: unique("mwxg"),
            gid: free_gid(),
        }
    }

    /// A unique group, created now with `groupadd`.
    pub fn create() -> GroupGuard {
        let g = Self::reserve();
        sh(Command::new("groupadd")
            .args(["-g", &g.gid.to_string()])
            .arg(&g.name));
        g
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A unique user without a home directory, deleted when dropped.
pub struct UserGuard {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl UserGuard {
    pub fn create() -> UserGuard {
        let name = unique("mwxu");
        sh(Command::new("useradd")
            .args([
                "--no-create-home",
                "--no-user-group",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name));
        let id = |flag: &str| -> u32 {
            sh(Command::new("id").arg(flag).arg(&name))
                .trim()
                .parse()
                .unwrap()
        };
        UserGuard {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }

    /// Runs `argv` as this user with its groups from the group database (no shell).
    pub fn run(&self, argv: &[&str]) -> Out {
        Out::of(
            Command::new("setpriv")
                .arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.gid))
                .arg("--init-groups")
                .args(argv)
                .output()
                .expect("setpriv"),
        )
    }
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// `getfacl` of one path, physical, numeric off (names, as a user reads them).
pub fn getfacl(path: &Path) -> String {
    sh(Command::new("getfacl").args(["-p", "-P"]).arg(path))
}

/// `getfacl -R -P -p` of a tree: path -> its block of lines (without the `# file:` line).
pub fn getfacl_tree(root: &Path) -> BTreeMap<PathBuf, Vec<String>> {
    let text = sh(Command::new("getfacl").args(["-R", "-P", "-p"]).arg(root));
    let mut out = BTreeMap::new();
    for block in text.split("\n\n") {
        let mut lines = block.lines();
        let Some(first) = lines.next() else { continue };
        let Some(path) = first.strip_prefix("# file: ") else {
            continue;
        };
        out.insert(PathBuf::from(path), lines.map(str::to_string).collect());
    }
    out
}

/// What a write to an inode would change: mode, owner, group, ctime (s, ns), inode number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub ctime: (i64, i64),
    pub ino: u64,
}

pub fn inode(path: &Path) -> Inode {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"));
    Inode {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
    }
}

/// Every inode under `root` (symlinks themselves, never followed), by path.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Inode> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let i = inode(&p);
        if i.mode & 0o170000 == 0o040000 {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        out.insert(p, i);
    }
    out
}

/// Asserts two snapshots are identical, naming the first paths that differ.
#[track_caller]
pub fn assert_same(before: &BTreeMap<PathBuf, Inode>, after: &BTreeMap<PathBuf, Inode>) {
    let diff: Vec<_> = before
        .iter()
        .filter(|(p, i)| after.get(*p) != Some(i))
        .take(10)
        .map(|(p, i)| format!("{p:?}: {i:?} -> {:?}", after.get(p)))
        .collect();
    assert!(diff.is_empty(), "inodes changed:\n{}", diff.join("\n"));
    assert_eq!(before.len(), after.len(), "entries appeared or vanished");
}
