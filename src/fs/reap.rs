//! Freeing what a sync replaced or removed off the path that writes: before a name is renamed
//! over or unlinked, its inode is opened (`O_PATH`, never following a symlink), and after, the
//! descriptor goes to a thread of its own that closes it. The last close, not the rename or the
//! unlink, is then what frees the inode's blocks, on the other core while the writer goes on.
//!
//! Why: on ext4 mounted `discard` without a journal (this project's test machines), freeing an
//! inode's blocks discards them before the call returns, and a rename over a 6 kB file took
//! 180 to 330 µs of which the freeing was all but 20 µs (2,000 renames, `O_PATH` held against
//! not held). With a journal the freeing is cheaper, and holding costs one `openat` a file.
//!
//! A held descriptor gives no access to the file (`O_PATH`): nothing is read or written
//! through it, only closed. At most [`DEPTH`] wait, so a sync holds a bounded number of
//! descriptors; a full queue makes the writer wait. Dropping the [`Reaper`] waits until every
//! held descriptor is closed, so a finished sync has freed what it replaced. After a kill the
//! kernel closes them.

use rustix::fs::{Mode, OFlags};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Descriptors that may wait to be closed.
pub const DEPTH: usize = 256;

/// The closing thread (started at the first descriptor handed over) and its queue.
#[derive(Default)]
pub struct Reaper {
    queue: Option<(SyncSender<OwnedFd>, JoinHandle<()>)>,
}

impl Reaper {
    /// The inode at `name` in `dir` as it is now, held (not followed if a symlink); `None`
    /// when there is nothing there or it cannot be opened (the caller goes on without it:
    /// holding only moves work, it decides nothing).
    pub fn hold(dir: BorrowedFd<'_>, name: &str) -> Option<OwnedFd> {
        rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
    }

    /// Closes `fd` on the closing thread (here, when that thread cannot be started).
    pub fn release(&mut self, fd: OwnedFd) {
        if self.queue.is_none() {
            let (tx, rx) = sync_channel::<OwnedFd>(DEPTH);
            let spawned = std::thread::Builder::new()
                .name("mwx-reaper".into())
                .spawn(move || rx.into_iter().for_each(drop));
            match spawned {
                Ok(h) => self.queue = Some((tx, h)),
                Err(e) => {
                    log::debug!("closing replaced files inline: no thread for it ({e})");
                    return;
                }
            }
        }
        if let Some((tx, _)) = &self.queue {
            // A send fails only when the thread is gone: the fd comes back and is closed here.
            if let Err(back) = tx.send(fd) {
                drop(back.0);
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some((tx, h)) = self.queue.take() {
            drop(tx);
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A file renamed over while held keeps its inode until the reaper closes it, and a
    /// dropped reaper has closed everything.
    #[test]
    fn a_held_inode_outlives_its_name_until_the_reaper_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"old").unwrap();
        std::fs::write(dir.path().join("b"), b"new").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("l")).unwrap();
        let d = crate::fs::at::open_dir_path(dir.path()).unwrap();
        let held = Reaper::hold(d.as_fd(), "a").unwrap();
        let ino = rustix::fs::fstat(&held).unwrap().st_ino;
        std::fs::rename(dir.path().join("b"), dir.path().join("a")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"new");
        let st = rustix::fs::fstat(&held).unwrap();
        assert_eq!((st.st_ino, st.st_nlink), (ino, 0), "held, unlinked");
        // A symlink is held as itself, never followed.
        let l = Reaper::hold(d.as_fd(), "l").unwrap();
        let lst = rustix::fs::fstat(&l).unwrap();
        assert_eq!(
            crate::fs::at::file_type(&lst),
            rustix::fs::FileType::Symlink
        );
        assert!(Reaper::hold(d.as_fd(), "missing").is_none());
        // The descriptors of this process on the replaced inode.
        let old = dir.path().join("a (deleted)");
        let open_on_old = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|p| *p == old)
                .count()
        };
        let mut r = Reaper::default();
        let weak = rustix::io::dup(&held).unwrap();
        assert_eq!(open_on_old(), 2);
        r.release(held);
        r.release(l);
        drop(r);
        // Only our duplicate is left: the reaper closed its copy.
        assert_eq!(open_on_old(), 1);
        drop(weak);
    }
}
