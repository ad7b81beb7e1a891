//! The containerd source's second way to read an image: the snapshots containerd unpacked when
//! it pulled the image (the kubelet's pull, `ctr images import`), in place of the layer blobs.
//!
//! containerd names the committed snapshot of each layer by its chain ID (from the config's
//! `rootfs.diff_ids`). We take a read-only view of the top one (a unique key, under the
//! client's lease, so garbage collection keeps the view and the chain below it while it is
//! read; the view is removed when the [`View`] is dropped, on every exit path, and after a kill
//! the lease expires and the next garbage collection removes the view) and ask for its mounts.
//! Nothing is mounted: for the overlayfs snapshotter the mount's `lowerdir=` lists each layer's
//! unpacked directory (top first), for a one-layer image or the native snapshotter it is a bind
//! mount of one directory (the native one is the merged root). Each directory is read as one
//! layer, oldest first, through the same [`layers::add`] as the tar reader and the same merge
//! (overlay whiteouts: a character device 0:0; an opaque directory: the xattr
//! `trusted.overlay.opaque=y`).
//!
//! Everything below a layer directory is opened from its parent's descriptor without following
//! symlinks (the shared walker, [`crate::fs::at`]); files are hashed with BLAKE3 as the tar
//! path hashes them, and [`fetch`] reads them again from their layer directory, failing when a
//! file no longer has the content it had when the tree was read. It must never write, mount,
//! or follow a symlink below a layer directory.
//!
//! (Over 500 lines because the view, the reader, the checked fetch and `image.read`'s choice
//! with its page-cache probe are one read path, kept in one file beside the tar reader, with
//! their unit tests.)

use super::containerd::Client;
use super::layers::{self, Ingest};
use super::{clean_mode, Entry, Kind, Tree};
use crate::fs::at;
use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The snapshotters tried, in order: containerd's default, then the one without overlayfs.
const SNAPSHOTTERS: [&str; 2] = ["overlayfs", "native"];

/// A read-only view of an image's snapshots, removed when dropped.
pub(super) struct View {
    client: Client,
    snapshotter: String,
    key: String,
    /// The layer directories, oldest first.
    pub(super) dirs: Vec<PathBuf>,
}

impl Drop for View {
    fn drop(&mut self) {
        match self.client.snapshot_remove(&self.snapshotter, &self.key) {
            Ok(()) => log::debug!("removed the snapshot view {}", self.key),
            Err(e) => {
                log::warn!("{e:#}; the view goes when the sync's lease expires (within the hour)")
            }
        }
    }
}

/// The chain IDs of layers with these diff IDs, as containerd's unpack names their snapshots:
/// the first is its diff ID, each next one `sha256(previous + " " + diff ID)`.
pub(super) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::Digest;
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let id = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let h = sha2::Sha256::digest(format!("{prev} {d}").as_bytes());
                let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        out.push(id);
    }
    out
}

/// A view of the image whose layers have these diff IDs, when containerd has it unpacked in one
/// of its snapshotters; `None` when it has not.
pub(super) fn open(client: &Client, diff_ids: &[String]) -> Result<Option<View>> {
    let Some(top) = chain_ids(diff_ids).pop() else {
        return Ok(None);
    };
    for sn in SNAPSHOTTERS {
        let key = format!(
            "mw-experimental-view-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let Some(mounts) = client.snapshot_view(sn, &key, &top)? else {
            continue;
        };
        let mut view = View {
            client: client.clone(),
            snapshotter: sn.to_string(),
            key,
            dirs: Vec::new(),
        };
        let dirs = layer_dirs(&mounts).with_context(|| {
            format!(
                "reading the mounts of the {sn} snapshot {top} of {}",
                client.describe()
            )
        })?;
        for d in &dirs {
            check_owner(d)?;
        }
        log::debug!(
            "reading the image from {} {sn} snapshot directories (view {})",
            dirs.len(),
            view.key
        );
        view.dirs = dirs;
        return Ok(Some(view));
    }
    Ok(None)
}

/// What choosing a read path needs: `image.read` and the layers' diff IDs.
pub(super) struct Plan {
    pub(super) read: crate::config::ImageRead,
    pub(super) diff_ids: Vec<String>,
}

/// The view to read the image from, as `image.read` says: none for `blobs` or another source;
/// for `snapshots` one, or an error; for `auto` one when containerd has the image unpacked
/// (else the blobs, said at debug level).
pub(super) fn choose(
    plan: &Plan,
    store: &super::oci::Store,
    prefix: &str,
    reference: &str,
) -> Result<Option<View>> {
    use crate::config::ImageRead;
    let super::oci::Store::Containerd(client) = store else {
        return Ok(None);
    };
    let diff_ids = &plan.diff_ids[..];
    match plan.read {
        ImageRead::Blobs => Ok(None),
        ImageRead::Snapshots => match open(client, diff_ids)? {
            Some(v) => Ok(Some(v)),
            None => bail!(
                "image.read is snapshots, but {} has no unpacked snapshot of {reference} (tried \
                 the {} snapshotters); unpack it (a pod using it, or crictl pull), or set \
                 image.read: auto or blobs",
                client.describe(),
                SNAPSHOTTERS.join(" and ")
            ),
        },
        ImageRead::Auto => {
            let Some(v) = open(client, diff_ids)? else {
                log::debug!(
                    "{reference} has no unpacked snapshot in {}: reading its layer blobs",
                    client.describe()
                );
                return Ok(None);
            };
            // bench/read-paths: the snapshots win a rebuilt image when their pages are in the
            // page cache (as right after the kubelet's pull), the streamed blob when they are
            // not; the first sync's figures did not agree between runs, so the same rule.
            match warm(&v, prefix) {
                Some((cached, sampled)) if cached * 2 >= sampled => {
                    log::debug!(
                        "reading {reference} from its snapshots: {cached} of {sampled} sampled \
                         files are in the page cache"
                    );
                    Ok(Some(v))
                }
                Some((cached, sampled)) => {
                    log::debug!(
                        "reading {reference} from its layer blobs: only {cached} of {sampled} \
                         sampled snapshot files are in the page cache"
                    );
                    Ok(None)
                }
                None => {
                    log::debug!(
                        "reading {reference} from its snapshots: the page cache could not be probed"
                    );
                    Ok(Some(v))
                }
            }
        }
    }
}

/// How many of a sample of the newest layer's files (up to 64, the first found below
/// `prefix`, never through a symlink) have their first page in the page cache: `preadv2` of one
/// byte with `RWF_NOWAIT` fails with `EAGAIN` when it is not. (cached, sampled); `None` when the
/// kernel cannot say, or nothing was sampled.
fn warm(view: &View, prefix: &str) -> Option<(usize, usize)> {
    let top = view.dirs.last()?;
    let mut fd = at::open_dir_path(top).ok()?;
    for comp in prefix.split('/').filter(|c| !c.is_empty()) {
        fd = at::open_dir_at(fd.as_fd(), comp).ok()?;
    }
    let (mut cached, mut sampled) = (0, 0);
    let mut queue = std::collections::VecDeque::from([fd]);
    let mut dirs = 0;
    while let Some(d) = queue.pop_front() {
        dirs += 1;
        let mut names = Vec::new();
        let mut it = rustix::fs::Dir::read_from(&d).ok()?;
        while let Some(Ok(e)) = it.next() {
            let n = e.file_name();
            if n != c"." && n != c".." {
                names.push((n.to_owned(), e.file_type()));
            }
        }
        for (n, ft) in names {
            if ft == FileType::Directory && dirs + queue.len() < 256 {
                if let Ok(sub) = at::open_dir_at(d.as_fd(), n.as_c_str()) {
                    queue.push_back(sub);
                }
            } else if ft == FileType::RegularFile && sampled < 64 {
                let Ok(fd) = rustix::fs::openat(
                    d.as_fd(),
                    n.as_c_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                ) else {
                    continue;
                };
                let mut b = [0u8; 1];
                let mut bufs = [std::io::IoSliceMut::new(&mut b)];
                match rustix::io::preadv2(&fd, &mut bufs, 0, rustix::io::ReadWriteFlags::NOWAIT) {
                    Ok(0) => {}
                    Ok(_) => {
                        cached += 1;
                        sampled += 1;
                    }
                    Err(rustix::io::Errno::AGAIN) => sampled += 1,
                    Err(_) => return None,
                }
            }
        }
        if sampled >= 64 {
            break;
        }
    }
    (sampled > 0).then_some((cached, sampled))
}

/// The layer directories (oldest first) of a view's mounts: an overlay's `lowerdir=` (top
/// first), or one bind-mounted directory.
fn layer_dirs(mounts: &[super::containerd::Mount]) -> Result<Vec<PathBuf>> {
    let [(ty, source, options)] = mounts else {
        bail!("{} mounts, where one was expected", mounts.len());
    };
    let dirs: Vec<PathBuf> = if ty == "overlay" {
        if options.iter().any(|o| o.starts_with("upperdir=")) {
            bail!("an overlay with an upper directory, where a read-only view was expected");
        }
        let lower = options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .context("an overlay mount without lowerdir=")?;
        lower.split(':').rev().map(PathBuf::from).collect()
    } else if ty == "bind" || options.iter().any(|o| o == "bind" || o == "rbind") {
        vec![PathBuf::from(source)]
    } else {
        bail!("a mount of type {ty:?}, which is neither overlay nor bind");
    };
    if dirs.iter().any(|d| !d.is_absolute()) {
        bail!("a layer directory that is not an absolute path: {dirs:?}");
    }
    Ok(dirs)
}

/// The trust boundary: a layer directory's parent (containerd's snapshot directory) must be
/// owned by root and writable by nobody else, so only root can change what is read.
fn check_owner(dir: &std::path::Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    let st = rustix::fs::lstat(parent)
        .with_context(|| format!("looking at the snapshot directory {}", parent.display()))?;
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 || at::file_type(&st) != FileType::Directory {
        bail!(
            "the snapshot directory {} is not a directory owned by root and writable only by \
             it (uid {}, mode {:o}); refusing to read the image from it; check containerd's root \
             directory, or set image.read: blobs",
            parent.display(),
            st.st_uid,
            st.st_mode & 0o7777
        );
    }
    Ok(())
}

/// The code tree (below `prefix`) of the view's layers, merged as the tar layers are.
/// Each layer directory stops at `max_entries` entries (`image.max_layer_entries`), as a tar
/// layer does.
pub(super) fn tree(
    view: &View,
    prefix: &str,
    reference: &str,
    (max_entries, hash): (u64, bool),
    notes: &mut Vec<String>,
) -> Result<Tree> {
    // One ingest for every layer and every walking thread (a lock per batch of entries: the
    // walk's threads read and hash outside it), so the tree is built once, never copied.
    let ing = Mutex::new(Ingest::new(prefix));
    let seq = AtomicU64::new(0);
    for (li, dir) in view.dirs.iter().enumerate() {
        let root = at::open_dir_path(dir)
            .with_context(|| format!("opening the snapshot directory {}", dir.display()))?;
        let limit = (seq.load(Ordering::Relaxed) + max_entries, dir.as_path());
        let layer = || Layer {
            li,
            prefix,
            hash,
            limit,
            seq: &seq,
            ing: &ing,
            whiteouts: Vec::new(),
            opaque: Vec::new(),
            notes: Vec::new(),
            buf: Vec::new(),
            batch: Vec::new(),
        };
        let mut ctx = layer();
        // The way down to `prefix`, one component at a time.
        let mut fd = root;
        let mut rel = String::new();
        let mut reached = true;
        if ctx.opaque(fd.as_fd())? {
            ctx.item("", Item::Opaque)?;
        }
        for comp in prefix.split('/').filter(|c| !c.is_empty()) {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(comp);
            let Some(st) = at::lstat_at(fd.as_fd(), comp)? else {
                reached = false;
                break;
            };
            let descend = ctx.stat_entry(fd.as_fd(), comp, &rel, &st, None)?;
            if !descend {
                reached = false;
                break;
            }
            fd = at::open_dir_at(fd.as_fd(), comp)
                .with_context(|| format!("opening {rel:?} in {}", dir.display()))?;
            if ctx.opaque(fd.as_fd())? {
                ctx.item(&rel, Item::Opaque)?;
            }
        }
        ctx.flush()?;
        let (mut whiteouts, mut opaque) = (ctx.whiteouts, ctx.opaque);
        notes.extend(ctx.notes);
        if reached {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 4);
            let walk = crate::fs::walk::Walk {
                threads,
                ..Default::default()
            };
            let parts = walk
                .parallel(fd.as_fd(), prefix, layer)
                .with_context(|| format!("reading the snapshot directory {}", dir.display()))?;
            for mut p in parts {
                p.flush()?;
                whiteouts.extend(p.whiteouts);
                opaque.extend(p.opaque);
                notes.extend(p.notes);
            }
        }
        ing.lock()
            .map_err(|_| anyhow::anyhow!("a snapshot reader thread panicked"))?
            .marks
            .add(li, whiteouts, opaque);
    }
    let ing = ing
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a snapshot reader thread panicked"))?;
    super::merge::merge(ing.parts, ing.nodes, &ing.marks, prefix, reference, notes)
}

/// One item of a layer directory: an entry, a whiteout of its path, or its path marked opaque.
enum Item {
    Entry(Entry),
    Whiteout,
    Opaque,
}

/// One thread's part of reading one layer directory: entries go to the shared ingest, the
/// layer's whiteouts and opaque directories are gathered here.
struct Layer<'a, 'p> {
    li: usize,
    prefix: &'a str,
    /// Whether files are read and hashed (else only looked at: see `Image::defer_hashes`).
    hash: bool,
    /// The sequence number this layer may not reach, and its directory (for the error).
    limit: (u64, &'a std::path::Path),
    seq: &'a AtomicU64,
    ing: &'a Mutex<Ingest<'p>>,
    whiteouts: Vec<String>,
    opaque: Vec<String>,
    notes: Vec<String>,
    /// This thread's read buffer: a file up to its size is read in one `read`.
    buf: Vec<u8>,
    /// Entries read but not yet in the shared ingest (path, entry, sequence number): they go
    /// in [`BATCH`] at a time, so the threads take the ingest's lock once a batch, not once an
    /// entry (a profile of a 200k-entry sync had 5.1% of its samples in waking threads and 5.7%
    /// in switching, most of it on that lock: README, "How an image is read").
    batch: Vec<(String, Entry, u64)>,
}

/// How many entries a reading thread gathers before it takes the ingest's lock.
const BATCH: usize = 256;

impl Layer<'_, '_> {
    fn item(&mut self, path: &str, item: Item) -> Result<()> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        if n >= self.limit.0 {
            bail!(
                "the snapshot directory {} has more entries than image.max_layer_entries: \
                 refusing it, it would exhaust memory; raise image.max_layer_entries if the image \
                 is genuine",
                self.limit.1.display()
            );
        }
        match item {
            Item::Whiteout => self.whiteouts.push(path.to_string()),
            Item::Opaque => self.opaque.push(path.to_string()),
            Item::Entry(e) => {
                self.batch.push((path.to_string(), e, n));
                if self.batch.len() >= BATCH {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Moves the gathered entries into the shared ingest (under its lock, once).
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut ing = self
            .ing
            .lock()
            .map_err(|_| anyhow::anyhow!("a snapshot reader thread panicked"))?;
        for (path, e, n) in self.batch.drain(..) {
            ing.add(&path, &e, self.li, n)?;
        }
        Ok(())
    }

    /// Whether the directory is marked opaque (overlayfs: `trusted.overlay.opaque=y`). Never
    /// asked of the bottom layer: there is nothing below it to hide (one `fgetxattr` a
    /// directory saved on a one-layer image, a rebuilt one).
    fn opaque(&self, dir: BorrowedFd<'_>) -> Result<bool> {
        if self.li == 0 {
            return Ok(false);
        }
        let mut buf = [0u8; 4];
        match rustix::fs::fgetxattr(dir, "trusted.overlay.opaque", &mut buf) {
            Ok(n) => Ok(&buf[..n] == b"y"),
            Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => Ok(false),
            Err(e) => Err(e).context("reading the overlay opaque mark"),
        }
    }

    /// Adds the entry `name` of `dir` (its path from the image root `rel`, its lstat); whether
    /// it is a directory to go into.
    /// `file`: the entry already opened (a regular file, `st` its `fstat`).
    fn stat_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &str,
        rel: &str,
        st: &rustix::fs::Stat,
        file: Option<std::fs::File>,
    ) -> Result<bool> {
        let ft = at::file_type(st);
        let mtime = st.st_mtime;
        // As the tar reader: whole seconds (a tar header's mtime).
        let base = |kind, mode| Entry {
            kind,
            mode: clean_mode(kind, mode),
            size: 0,
            mtime,
            mtime_nsec: 0,
            hash: None,
            target: None,
        };
        let entry = match ft {
            FileType::Directory => base(Kind::Dir, st.st_mode),
            FileType::Symlink => {
                let t = rustix::fs::readlinkat(dir, name, Vec::new())
                    .with_context(|| format!("reading the symlink {rel:?}"))?;
                let t = String::from_utf8_lossy(t.as_bytes()).into_owned();
                if t.is_empty() {
                    return Ok(false);
                }
                Entry {
                    target: Some(t),
                    ..base(Kind::Symlink, 0o777)
                }
            }
            FileType::RegularFile => {
                let (size, hash) =
                    if self.hash && layers::place(self.prefix, rel).is_some_and(|(_, c)| !c) {
                        let f = match file {
                            Some(f) => f,
                            None => {
                                open_file(dir, name)
                                    .with_context(|| format!("opening {rel:?}"))?
                                    .0
                            }
                        };
                        let (n, h) = hash_file(&f, st.st_size as u64, &mut self.buf)
                            .with_context(|| format!("reading {rel:?}"))?;
                        (n, Some(h))
                    } else {
                        (st.st_size as u64, None)
                    };
                Entry {
                    size,
                    hash,
                    ..base(Kind::File, st.st_mode)
                }
            }
            FileType::CharacterDevice if st.st_rdev == 0 => {
                self.item(rel, Item::Whiteout)?;
                return Ok(false);
            }
            _ => {
                if layers::place(self.prefix, rel).is_some_and(|(_, c)| !c) {
                    self.notes.push(format!(
                        "image: skipped {rel:?}: a device, fifo or other special file"
                    ));
                }
                return Ok(false);
            }
        };
        let is_dir = entry.kind == Kind::Dir;
        self.item(rel, Item::Entry(entry))?;
        Ok(is_dir)
    }
}

impl crate::fs::walk::Visitor for Layer<'_, '_> {
    fn dir(&mut self, d: &crate::fs::walk::Dir<'_>) -> Result<bool> {
        // The start (`prefix`) was looked at on the way down.
        if d.rel != self.prefix && self.opaque(d.fd)? {
            self.item(d.rel, Item::Opaque)?;
        }
        Ok(true)
    }

    fn entry(&mut self, e: &crate::fs::walk::Entry<'_>) -> Result<bool> {
        let Some(rel) = e.rel_utf8() else {
            self.notes.push(format!(
                "image: dropped the entry {:?}: its name is not UTF-8",
                e.rel()
            ));
            return Ok(false);
        };
        let name = e.name_str().unwrap_or_default();
        // A regular file of the code tree, as the listing says: opened at once, its `fstat` in
        // place of an `lstat` (one call a file fewer). Anything else, or a file that is no
        // longer one when opened, is looked at with `lstat` as it is now.
        if self.hash
            && e.file_type == FileType::RegularFile
            && layers::place(self.prefix, &rel).is_some_and(|(_, c)| !c)
        {
            if let Ok((f, st)) = open_file(e.dir, name) {
                return self.stat_entry(e.dir, name, &rel, &st, Some(f));
            }
        }
        let Some(st) = e.lstat().with_context(|| format!("lstat {rel:?}"))? else {
            bail!("{rel:?} vanished from the snapshot while it was read");
        };
        self.stat_entry(e.dir, name, &rel, &st, None)
    }
}

/// Opens a regular file of a layer directory, never through a symlink, never blocking on a
/// FIFO; refuses anything but a regular file. With its `fstat`. (Not `fs::at::open_regular`:
/// a snapshot's hard links are containerd's, read only, so they are not refused here.)
fn open_file(dir: BorrowedFd<'_>, name: &str) -> Result<(std::fs::File, rustix::fs::Stat)> {
    let fd: OwnedFd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if at::file_type(&st) != FileType::RegularFile {
        bail!("not a regular file any more");
    }
    Ok((std::fs::File::from(fd), st))
}

/// The BLAKE3 hash of a file's first `size` bytes (its size when opened) and how many there
/// were, read through `buf` (grown to the file's size, up to 1 MiB): a file that fits is read
/// in one `read`, with no second one to find its end. Bytes past `size` are not read; a file
/// that grew is caught when it is fetched, which reads to the end and checks this hash.
fn hash_file(f: &std::fs::File, size: u64, buf: &mut Vec<u8>) -> std::io::Result<(u64, [u8; 32])> {
    let want = usize::try_from(size).unwrap_or(usize::MAX).min(1 << 20);
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut hs = blake3::Hasher::new();
    let mut left = size;
    let mut f = f;
    while left > 0 {
        let chunk = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = match f.read(&mut buf[..chunk]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hs.update(&buf[..n]);
        left -= n as u64;
    }
    Ok((size - left, *hs.finalize().as_bytes()))
}

/// Streams the content of each file in `wanted` (indices into `tree`, which [`tree`] built) to
/// `f`, from its layer directory; a file whose content is not what was hashed fails the read.
pub(super) fn fetch(
    view: &View,
    prefix: &str,
    tree: &Tree,
    wanted: &[u32],
    f: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(wanted.len());
    for &i in wanted {
        let i = i as usize;
        if tree.entry(i).kind != Kind::File {
            bail!("{:?} is not a file of the image", tree.path(i));
        }
        order.push((layers::decode_pos(tree.pos(i)).0, i));
    }
    order.sort_unstable();
    let mut cache: Option<(usize, at::DirCache)> = None;
    for (_, i) in order {
        let (file, full) = open_in_layer(view, prefix, tree, i, &mut cache)?;
        let want = tree.entry(i).hash;
        let mut r = Checked {
            inner: file,
            hs: blake3::Hasher::new(),
            want,
            what: &full,
        };
        f(i, &mut r)?;
    }
    Ok(())
}

/// Opens the file `i` of `tree` in its layer directory (through `cache`, the last layer's
/// open directories); with its path from the layer root, for messages.
fn open_in_layer(
    view: &View,
    prefix: &str,
    tree: &Tree,
    i: usize,
    cache: &mut Option<(usize, at::DirCache)>,
) -> Result<(std::fs::File, String)> {
    let li = layers::decode_pos(tree.pos(i)).0;
    let Some(dir) = view.dirs.get(li) else {
        bail!("{:?}: no layer {li} in the snapshot view", tree.path(i));
    };
    if cache.as_ref().is_none_or(|(l, _)| *l != li) {
        let root = at::open_dir_path(dir)
            .with_context(|| format!("opening the snapshot directory {}", dir.display()))?;
        *cache = Some((li, at::DirCache::new(root)));
    }
    let dc = &mut cache.as_mut().expect("set above").1;
    let full = if prefix.is_empty() {
        tree.path(i).to_string()
    } else {
        format!("{prefix}/{}", tree.path(i))
    };
    let (parent, name) = at::split(&full);
    let gone = || {
        format!(
            "{full:?} is no longer in the snapshot directory {}; the image changed while it \
             was read; the next sync reads it again",
            dir.display()
        )
    };
    let at::Opened::Dir(d) = dc.open(parent)? else {
        bail!(gone());
    };
    let (file, _) = open_file(d, name).with_context(gone)?;
    Ok((file, full))
}

/// The BLAKE3 hash of the file `i` of `tree` (which [`tree`] built), read from its layer
/// directory as [`fetch`] reads it: for a tree read without hashes.
pub(super) fn hash_one(view: &View, prefix: &str, tree: &Tree, i: usize) -> Result<[u8; 32]> {
    let (mut file, full) = open_in_layer(view, prefix, tree, i, &mut None)?;
    let mut hs = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hs)
        .with_context(|| format!("hashing {full:?} in its snapshot"))?;
    Ok(*hs.finalize().as_bytes())
}

/// A file read that fails at its end when the bytes were not those hashed when the tree was
/// read (a snapshot that changed under the sync).
struct Checked<'a> {
    inner: std::fs::File,
    hs: blake3::Hasher,
    want: Option<[u8; 32]>,
    what: &'a str,
}

impl Read for Checked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.want.is_none() {
            return Ok(n);
        }
        self.hs.update(&buf[..n]);
        if n == 0
            && !buf.is_empty()
            && self
                .want
                .is_some_and(|w| w != *self.hs.finalize().as_bytes())
        {
            return Err(std::io::Error::other(format!(
                "{:?} changed in its snapshot since the tree was read; the next sync reads it again",
                self.what
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_hashed_whole_at_every_size_around_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        // Below, at and above the 1 MiB buffer, and empty; one buffer for all, as a thread's.
        for size in [
            0usize,
            1,
            4095,
            1 << 20,
            (1 << 20) + 1,
            3 * (1 << 20) + 7,
            5,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            let (n, h) = hash_file(&f, size as u64, &mut buf).unwrap();
            assert_eq!(n, size as u64, "size {size}");
            assert_eq!(h, *blake3::hash(&data).as_bytes(), "size {size}");
        }
        // A file shorter than the size it was opened at: what is there, and its length.
        let p = dir.path().join("short");
        std::fs::write(&p, b"abc").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let (n, h) = hash_file(&f, 10, &mut buf).unwrap();
        assert_eq!((n, h), (3, *blake3::hash(b"abc").as_bytes()));
    }

    #[test]
    fn chain_ids_are_containerds() {
        // identity.ChainIDs of two layers: the first is its diff ID.
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        use sha2::Digest;
        let h = sha2::Sha256::digest(format!("{a} {b}").as_bytes());
        assert_eq!(ids[1], format!("sha256:{:x}", h));
    }

    #[test]
    fn layer_dirs_are_oldest_first() {
        let m = vec![(
            "overlay".to_string(),
            "overlay".to_string(),
            vec![
                "index=off".into(),
                "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs".into(),
            ],
        )];
        assert_eq!(
            layer_dirs(&m).unwrap(),
            ["/s/1/fs", "/s/2/fs", "/s/3/fs"].map(PathBuf::from)
        );
        let b = vec![(
            "bind".into(),
            "/s/1/fs".into(),
            vec!["ro".into(), "rbind".into()],
        )];
        assert_eq!(layer_dirs(&b).unwrap(), [PathBuf::from("/s/1/fs")]);
        let up = vec![(
            "overlay".into(),
            "overlay".into(),
            vec!["upperdir=/u".into(), "lowerdir=/l".into()],
        )];
        assert!(layer_dirs(&up).is_err());
    }
}
