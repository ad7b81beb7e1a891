//! The one traversal of a tree that unprivileged users write while it runs. Permissions, the
//! sync engine's scans, `diff`, `reset` and the directory image source all walk through here,
//! so the safety rules live in this file once:
//!
//! * every directory below the start is opened by [`open_dir_at`], relative to its parent's
//!   descriptor with `O_NOFOLLOW|O_DIRECTORY`: a directory swapped for a symlink is refused by
//!   the kernel (`ELOOP`/`ENOTDIR`), reported as [`Skip::Replaced`] and never followed, so
//!   nothing outside the tree is ever reached;
//! * a directory on another filesystem (`st_dev` differs from the start's) is not entered;
//! * symlinks are handed to the visitor as symlinks and never followed; regular files are
//!   opened only through [`crate::fs::at::open_regular`], which refuses hard-linked inodes,
//!   FIFOs and devices;
//! * descriptors stay bounded: a pending directory is `(parent fd, name)`, opened only when its
//!   turn comes, and the pending stack is worked depth-first (LIFO), so open descriptors grow
//!   with depth, not with the size of the tree.
//!
//! Callers supply a [`Visitor`] that decides what to do with each entry; the walk knows nothing
//! of ACLs, manifests or images. [`Walk::serial`] visits in sorted order (parents before
//! children, names sorted per directory) for callers that need a stable order;
//! [`Walk::parallel`] spreads directories over a few threads, each with its own visitor, for
//! callers that only sum or collect. This module must never write: what to change is the
//! visitor's business, through the descriptors it is given.
//!
//! (Over 500 lines because the unit tests of these rules, planted symlinks and a directory
//! swapped mid-walk, live beside the code they pin.)

use crate::fs::at::open_dir_at;
use anyhow::{anyhow, Result};
use rustix::fs::{AtFlags, FileType, RawDir, Stat};
use rustix::io::Errno;
use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// A hook called with a directory's relative path just before it is opened (tests use it to
/// swap a directory for a symlink at exactly that moment).
pub type BeforeOpen<'a> = dyn Fn(&str) + Sync + 'a;

/// Why the walk left something alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Was a directory when listed, then replaced (by a symlink or a file) or removed before it
    /// was opened; or listed, then gone before its type could be read.
    Replaced,
    /// A directory on another filesystem: not entered.
    OtherFilesystem,
}

/// A directory the walk has opened and is about to read (the start included, `rel` `""`).
pub struct Dir<'a> {
    pub fd: BorrowedFd<'a>,
    pub stat: &'a Stat,
    /// Relative to the start, `/`-separated (lossy for names that are not UTF-8).
    pub rel: &'a str,
}

/// One name read from an open directory.
pub struct Entry<'a> {
    /// The directory it is in (open).
    pub dir: BorrowedFd<'a>,
    /// That directory's path relative to the start.
    pub parent_rel: &'a str,
    pub name: &'a CStr,
    /// From the directory listing (resolved with `lstat` when the filesystem does not say).
    pub file_type: FileType,
    /// The start's filesystem.
    pub dev: u64,
}

impl Entry<'_> {
    /// The entry's path relative to the start (lossy for names that are not UTF-8).
    pub fn rel(&self) -> String {
        join(self.parent_rel, self.name)
    }

    /// The name, when it is UTF-8.
    pub fn name_str(&self) -> Option<&str> {
        self.name.to_str().ok()
    }

    /// The relative path, when the name is UTF-8 (callers that key paths by string skip the
    /// others, and so never walk below them).
    pub fn rel_utf8(&self) -> Option<String> {
        let name = self.name_str()?;
        Some(if self.parent_rel.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.parent_rel)
        })
    }

    /// `lstat` of the entry; `None` when it is gone.
    pub fn lstat(&self) -> rustix::io::Result<Option<Stat>> {
        match rustix::fs::statat(self.dir, self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What a caller does with the walk.
pub trait Visitor {
    /// A directory was opened (on the start's filesystem). Return `false` to not read it.
    fn dir(&mut self, _dir: &Dir<'_>) -> Result<bool> {
        Ok(true)
    }
    /// An entry of an open directory. For a directory, return `true` to walk into it.
    fn entry(&mut self, e: &Entry<'_>) -> Result<bool>;
    /// Something the walk left alone, and why.
    fn skipped(&mut self, _rel: &str, _why: Skip) {}
    /// The walk itself failed on `rel` (opening or reading a directory): `what` says what it was
    /// doing. `Ok` goes on with the rest of the tree; `Err` (the default) stops the walk.
    fn error(&mut self, rel: &str, what: &str, e: Errno) -> Result<()> {
        Err(anyhow!("{what} {rel:?}: {e}"))
    }
}

/// A closure is a visitor that only looks at entries.
impl<F: FnMut(&Entry<'_>) -> Result<bool>> Visitor for F {
    fn entry(&mut self, e: &Entry<'_>) -> Result<bool> {
        self(e)
    }
}

/// The traversal's options.
#[derive(Default)]
pub struct Walk<'a> {
    /// Worker threads for [`Walk::parallel`]; 0: the machine's available parallelism.
    pub threads: usize,
    pub before_open: Option<&'a BeforeOpen<'a>>,
}

fn join(rel: &str, name: &CStr) -> String {
    let name = name.to_string_lossy();
    if rel.is_empty() {
        name.into_owned()
    } else {
        format!("{rel}/{name}")
    }
}

const BUF: usize = 64 * 1024;

/// One directory's listing, read into owned names (the serial walk recurses while it holds it).
fn list(
    fd: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
) -> rustix::io::Result<Vec<(CString, FileType)>> {
    let mut out = Vec::new();
    let mut it = RawDir::new(fd, buf);
    while let Some(ent) = it.next() {
        let ent = ent?;
        let name = ent.file_name();
        if name != c"." && name != c".." {
            out.push((name.to_owned(), ent.file_type()));
        }
    }
    Ok(out)
}

/// The type of `name` when the listing did not say; `None` when it is gone.
fn resolve_type(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(FileType::from_raw_mode(s.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the shared part of a walk stands for one directory: open it, check it, call `dir`.
enum Opened {
    Read(OwnedFd),
    Left,
}

impl Walk<'_> {
    /// Opens a pending directory relative to its parent and checks it; reports what it skips.
    fn open(
        &self,
        v: &mut dyn Visitor,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &str,
        dev: u64,
    ) -> Result<Opened> {
        if let Some(hook) = self.before_open {
            hook(rel);
        }
        let fd = match open_dir_at(parent, name) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => {
                v.skipped(rel, Skip::Replaced);
                return Ok(Opened::Left);
            }
            Err(e) => {
                v.error(rel, "opening the directory", e)?;
                return Ok(Opened::Left);
            }
        };
        self.check(v, fd, rel, dev)
    }

    fn check(&self, v: &mut dyn Visitor, fd: OwnedFd, rel: &str, dev: u64) -> Result<Opened> {
        let st = match rustix::fs::fstat(&fd) {
            Ok(st) => st,
            Err(e) => {
                v.error(rel, "stat of the directory", e)?;
                return Ok(Opened::Left);
            }
        };
        if st.st_dev != dev {
            v.skipped(rel, Skip::OtherFilesystem);
            return Ok(Opened::Left);
        }
        let read = v.dir(&Dir {
            fd: fd.as_fd(),
            stat: &st,
            rel,
        })?;
        Ok(if read { Opened::Read(fd) } else { Opened::Left })
    }

    /// Visits one entry; returns whether it is a directory to walk into.
    fn visit(
        v: &mut dyn Visitor,
        dir: BorrowedFd<'_>,
        rel: &str,
        name: &CStr,
        mut ty: FileType,
        dev: u64,
    ) -> Result<bool> {
        if ty == FileType::Unknown {
            ty = match resolve_type(dir, name) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    v.skipped(&join(rel, name), Skip::Replaced);
                    return Ok(false);
                }
                Err(e) => {
                    v.error(&join(rel, name), "stat of", e)?;
                    return Ok(false);
                }
            };
        }
        let descend = v.entry(&Entry {
            dir,
            parent_rel: rel,
            name,
            file_type: ty,
            dev,
        })?;
        Ok(descend && ty == FileType::Directory)
    }

    /// Walks the tree below `start` (an open directory whose path is `prefix`) in sorted order:
    /// `dir` for the start, then each entry, a directory's content right after it.
    pub fn serial(&self, start: BorrowedFd<'_>, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        let fd = rustix::io::dup(start)?;
        let dev = rustix::fs::fstat(&fd)?.st_dev;
        let mut buf = vec![MaybeUninit::<u8>::uninit(); BUF];
        if let Opened::Read(fd) = self.check(v, fd, prefix, dev)? {
            self.serial_dir(v, fd, prefix, dev, &mut buf)?;
        }
        Ok(())
    }

    fn serial_dir(
        &self,
        v: &mut dyn Visitor,
        fd: OwnedFd,
        rel: &str,
        dev: u64,
        buf: &mut [MaybeUninit<u8>],
    ) -> Result<()> {
        let mut names = match list(fd.as_fd(), buf) {
            Ok(n) => n,
            Err(e) => return v.error(rel, "reading the directory", e),
        };
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, ty) in names {
            if Self::visit(v, fd.as_fd(), rel, &name, ty, dev)? {
                let sub_rel = join(rel, &name);
                if let Opened::Read(sub) = self.open(v, fd.as_fd(), &name, &sub_rel, dev)? {
                    self.serial_dir(v, sub, &sub_rel, dev, buf)?;
                }
            }
        }
        Ok(())
    }

    /// Walks the tree below `start` on a few threads, each with its own visitor from `make`
    /// (the calling thread's, which visits `start` itself, comes first). Order is unspecified.
    /// The first `Err` from a visitor stops every thread and is returned.
    pub fn parallel<V, F>(&self, start: BorrowedFd<'_>, prefix: &str, make: F) -> Result<Vec<V>>
    where
        V: Visitor + Send,
        F: Fn() -> V + Sync,
    {
        let fd = rustix::io::dup(start)?;
        let dev = rustix::fs::fstat(&fd)?.st_dev;
        let threads = if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        };
        let shared = Shared {
            walk: self,
            dev,
            threads,
            queue: Mutex::new(Queue {
                stack: Vec::new(),
                idle: 0,
                done: false,
            }),
            idle_hint: AtomicUsize::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
        };
        let mut first = make();
        let mut buf = vec![MaybeUninit::<u8>::uninit(); BUF];
        let subs = match self.check(&mut first, fd, prefix, dev)? {
            Opened::Read(fd) => shared.read(&mut first, &mut buf, fd, prefix)?,
            Opened::Left => Vec::new(),
        };
        drop(buf);
        shared.queue.lock().unwrap().stack.extend(subs);
        let mut out: Vec<V> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut v = make();
                        shared.worker(&mut v);
                        v
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        if let Some(e) = shared.error.into_inner().unwrap() {
            return Err(e);
        }
        out.insert(0, first);
        Ok(out)
    }
}

/// A directory waiting its turn: opened from its parent only when a worker takes it.
struct Item {
    parent: Arc<OwnedFd>,
    name: CString,
    rel: String,
}

/// The shared part of the pending directories: a worker works through its own stack and puts
/// half of it here only when another worker is idle (few wake-ups, no lock per directory).
struct Queue {
    stack: Vec<Item>,
    /// Workers waiting for work; all of them with an empty queue means the walk is done.
    idle: usize,
    done: bool,
}

struct Shared<'w, 'a> {
    walk: &'w Walk<'a>,
    dev: u64,
    threads: usize,
    queue: Mutex<Queue>,
    /// `queue.idle`, readable without the lock: whether to share work.
    idle_hint: AtomicUsize,
    wake: Condvar,
    stop: AtomicBool,
    error: Mutex<Option<anyhow::Error>>,
}

impl Shared<'_, '_> {
    /// Reads one open directory: visits its entries, returns its subdirectories to walk.
    fn read(
        &self,
        v: &mut dyn Visitor,
        buf: &mut [MaybeUninit<u8>],
        fd: OwnedFd,
        rel: &str,
    ) -> Result<Vec<Item>> {
        let fd = Arc::new(fd);
        let mut subs = Vec::new();
        let mut it = RawDir::new(&*fd, buf);
        while let Some(ent) = it.next() {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    v.error(rel, "reading the directory", e)?;
                    break;
                }
            };
            let name = ent.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if Walk::visit(v, fd.as_fd(), rel, name, ent.file_type(), self.dev)? {
                subs.push(Item {
                    parent: fd.clone(),
                    name: name.to_owned(),
                    rel: join(rel, name),
                });
            }
        }
        Ok(subs)
    }

    fn one(
        &self,
        v: &mut dyn Visitor,
        buf: &mut [MaybeUninit<u8>],
        item: Item,
    ) -> Result<Vec<Item>> {
        match self
            .walk
            .open(v, item.parent.as_fd(), &item.name, &item.rel, self.dev)?
        {
            Opened::Read(fd) => {
                drop(item.parent);
                self.read(v, buf, fd, &item.rel)
            }
            Opened::Left => Ok(Vec::new()),
        }
    }

    fn worker(&self, v: &mut dyn Visitor) {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); BUF];
        // Depth-first through this worker's own stack (LIFO keeps open descriptors bounded by
        // depth); the shared queue only when it runs dry.
        let mut local: Vec<Item> = Vec::new();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let item = match local.pop() {
                Some(it) => it,
                None => {
                    let mut q = self.queue.lock().unwrap();
                    loop {
                        if q.done || self.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if let Some(it) = q.stack.pop() {
                            break it;
                        }
                        q.idle += 1;
                        self.idle_hint.store(q.idle, Ordering::Relaxed);
                        if q.idle == self.threads {
                            q.done = true;
                            self.wake.notify_all();
                            return;
                        }
                        q = self.wake.wait(q).unwrap();
                        q.idle -= 1;
                        self.idle_hint.store(q.idle, Ordering::Relaxed);
                    }
                }
            };
            match self.one(v, &mut buf, item) {
                Ok(subs) => local.extend(subs),
                Err(e) => {
                    self.error.lock().unwrap().get_or_insert(e);
                    let _q = self.queue.lock().unwrap();
                    self.stop.store(true, Ordering::Relaxed);
                    self.wake.notify_all();
                    return;
                }
            }
            if self.idle_hint.load(Ordering::Relaxed) > 0 && local.len() > 1 {
                // The oldest (shallowest, so largest) half goes to the idle workers.
                let give: Vec<Item> = local.drain(..local.len() / 2).collect();
                let mut q = self.queue.lock().unwrap();
                q.stack.extend(give);
                self.wake.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects every relative path it is shown, with its type letter.
    #[derive(Default)]
    struct Names(Vec<String>, Vec<(String, Skip)>);

    impl Visitor for Names {
        fn entry(&mut self, e: &Entry<'_>) -> Result<bool> {
            let t = match e.file_type {
                FileType::Directory => 'd',
                FileType::Symlink => 'l',
                FileType::RegularFile => 'f',
                _ => '?',
            };
            self.0.push(format!("{t} {}", e.rel()));
            Ok(true)
        }
        fn skipped(&mut self, rel: &str, why: Skip) {
            self.1.push((rel.to_string(), why));
        }
    }

    fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside/secret")).unwrap();
        std::fs::write(root.join("a.php"), "a").unwrap();
        std::fs::write(root.join("b/c/d.php"), "d").unwrap();
        std::fs::write(root.join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("b/out")).unwrap();
        (tmp, root)
    }

    fn open(p: &std::path::Path) -> OwnedFd {
        crate::fs::at::open_dir_path(p).unwrap()
    }

    #[test]
    fn serial_walk_is_sorted_parents_first_and_never_follows_a_symlink() {
        let (_tmp, root) = tree();
        let mut v = Names::default();
        Walk::default()
            .serial(open(&root).as_fd(), "", &mut v)
            .unwrap();
        assert_eq!(
            v.0,
            [
                "f a.php",
                "d b",
                "d b/c",
                "f b/c/d.php",
                "l b/out",
                "f b.txt"
            ]
        );
    }

    #[test]
    fn parallel_walk_sees_the_same_entries() {
        let (_tmp, root) = tree();
        let vs = Walk {
            threads: 3,
            ..Default::default()
        }
        .parallel(open(&root).as_fd(), "", Names::default)
        .unwrap();
        assert_eq!(vs.len(), 4);
        let mut all: Vec<String> = vs.into_iter().flat_map(|v| v.0).collect();
        all.sort();
        assert_eq!(
            all,
            [
                "d b",
                "d b/c",
                "f a.php",
                "f b.txt",
                "f b/c/d.php",
                "l b/out"
            ]
        );
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_before_it_is_opened_is_skipped() {
        let (tmp, root) = tree();
        let hook = |rel: &str| {
            if rel == "b" {
                std::fs::rename(root.join("b"), tmp.path().join("moved")).unwrap();
                std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("b")).unwrap();
            }
        };
        for threads in [0, 2] {
            if threads == 2 {
                std::fs::remove_file(root.join("b")).unwrap();
                std::fs::rename(tmp.path().join("moved"), root.join("b")).unwrap();
            }
            let w = Walk {
                threads,
                before_open: Some(&hook),
            };
            let seen: Vec<Names> = if threads == 0 {
                let mut v = Names::default();
                w.serial(open(&root).as_fd(), "", &mut v).unwrap();
                vec![v]
            } else {
                w.parallel(open(&root).as_fd(), "", Names::default).unwrap()
            };
            let skipped: Vec<_> = seen.iter().flat_map(|v| v.1.clone()).collect();
            assert_eq!(skipped, [("b".to_string(), Skip::Replaced)]);
            assert!(!seen.iter().flat_map(|v| &v.0).any(|n| n.contains("secret")));
        }
    }

    #[test]
    fn a_visitor_error_stops_the_walk() {
        #[derive(Debug)]
        struct Fail;
        impl Visitor for Fail {
            fn entry(&mut self, e: &Entry<'_>) -> Result<bool> {
                if e.rel() == "b/c/d.php" {
                    anyhow::bail!("stop here");
                }
                Ok(true)
            }
        }
        let (_tmp, root) = tree();
        let err = Walk::default()
            .serial(open(&root).as_fd(), "", &mut Fail)
            .unwrap_err();
        assert_eq!(err.to_string(), "stop here");
        let err = Walk {
            threads: 2,
            ..Default::default()
        }
        .parallel(open(&root).as_fd(), "", || Fail)
        .unwrap_err();
        assert_eq!(err.to_string(), "stop here");
    }
}
