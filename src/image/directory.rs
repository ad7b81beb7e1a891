//! The `directory` source: a plain tree on disk (an unpacked image root), read in place. Its
//! digest is a hash over a listing of the tree (path, type, mode, size, mtime, ctime, inode,
//! symlink target), so any change to it is a new image; file contents are hashed only when
//! `sync` asks. It must never follow a symlink (every directory and file is opened from its
//! parent's fd with `O_NOFOLLOW`), never descend into another filesystem, and never write.

use super::tree::{Node, Parts};
use super::{clean_mode, Backend, Entry, Image, Kind, Tree};
use crate::config::Config;
use crate::fs::at;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// Opens the directory image of `image.location` + `image.path` and scans it.
pub(super) fn open(cfg: &Config) -> Result<Image> {
    let location = cfg.image.location.clone().unwrap_or_default();
    let mut fd = at::open_dir_path(&location).with_context(|| {
        format!(
            "opening the image directory {} (image.location)",
            location.display()
        )
    })?;
    let inner = cfg
        .image
        .path
        .to_string_lossy()
        .trim_matches('/')
        .to_string();
    for comp in inner.split('/').filter(|c| !c.is_empty()) {
        fd = at::open_dir_at(fd.as_fd(), comp).with_context(|| {
            format!(
                "opening {} inside the image directory {} (image.path; a symlink is refused)",
                cfg.image.path.display(),
                location.display()
            )
        })?;
    }
    let (tree, digest, bad) = scan(fd.as_fd())
        .with_context(|| format!("reading the image directory {}", location.display()))?;
    for b in &bad {
        log::warn!("image directory: skipped {b:?}: its name is not UTF-8");
    }
    tree.log_size();
    Ok(Image {
        reference: location.display().to_string(),
        digest,
        backend: Backend::Directory { root: fd, location },
        tree_cache: Some(tree),
        hash_on_read: true,
    })
}

/// Scans a directory image with a few threads (the shared walker, one visitor per thread): its
/// tree, and the digest over the sorted listing (path, type, mode, size, mtime, ctime, inode,
/// target).
///
/// Memory: this is the peak of a `directory` sync's first phase, so each thread appends its
/// names to one set of tree parts and its entries to one vector of nodes (no `String` per path), the
/// threads' parts are concatenated (the large buffers grow in place), and the nodes are put in
/// path order by sorting a vector of `u32` indices and applying that permutation in place. What
/// the digest also covers (inode, ctime) rides along: the inode in the node's `pos` (0 in the
/// tree handed out), the ctime in one small vector.
pub(super) fn scan(root: BorrowedFd<'_>) -> Result<(Tree, String, Vec<String>)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let walk = crate::fs::walk::Walk {
        threads,
        ..Default::default()
    };
    let workers = walk.parallel(root, "", ScanVisitor::default)?;
    let mut parts = Parts::default();
    let mut nodes: Vec<Node> = Vec::new();
    let mut ctimes: Vec<(i64, u32)> = Vec::new();
    let mut bad = Vec::new();
    for mut w in workers {
        if nodes.is_empty() {
            (parts, nodes) = (std::mem::take(&mut w.parts), std::mem::take(&mut w.nodes));
            ctimes = std::mem::take(&mut w.ctimes);
        }
        // The rest are moved over from their end, a chunk of nodes and their paths at a time,
        // each thread's buffers shrinking as they go: copying a thread's part whole would
        // hold it twice. (A thread's paths are in the order of its nodes, back to back.)
        while !w.nodes.is_empty() {
            let from = w.nodes.len().saturating_sub(8192);
            for n in &w.nodes[from..] {
                nodes.push(parts.adopt(&w.parts, n)?);
            }
            w.parts.truncate_before(&w.nodes[from..]);
            w.nodes.truncate(from);
            ctimes.extend(w.ctimes.drain(from..));
            w.parts.shrink_to_fit();
            w.nodes.shrink_to_fit();
        }
        bad.extend(w.bad);
    }
    let path = |n: &Node| parts.path(n);
    let mut order: Vec<u32> = (0..nodes.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| parts.cmp(&nodes[a as usize], &nodes[b as usize]));
    let mut listing = blake3::Hasher::new();
    let mut line = String::new();
    for &k in &order {
        use std::fmt::Write as _;
        let (n, ctime) = (&nodes[k as usize], ctimes[k as usize]);
        let e = &parts.entry(n);
        line.clear();
        let _ = writeln!(
            line,
            "{}\0{}\0{:o}\0{}\0{}.{}\0{}.{}\0{}\0{}",
            path(n),
            e.kind.letter(),
            e.mode,
            e.size,
            e.mtime,
            e.mtime_nsec,
            ctime.0,
            ctime.1,
            { n.pos },
            e.target.as_deref().unwrap_or("")
        );
        listing.update(line.as_bytes());
    }
    drop(ctimes);
    let digest = format!("blake3:{}", listing.finalize().to_hex());
    permute(&mut nodes, &mut order);
    drop(order);
    for n in &mut nodes {
        n.pos = 0;
    }
    parts.shrink_to_fit();
    nodes.shrink_to_fit();
    Ok((Tree::from_parts(parts, nodes), digest, bad))
}

/// Puts `v` in the order `order` gives (`v[k]` becomes the old `v[order[k]]`) in place, one
/// cycle at a time; `order` is used up (each done position is marked by pointing at itself).
fn permute<T>(v: &mut [T], order: &mut [u32]) {
    for start in 0..v.len() {
        let mut cur = start;
        loop {
            let next = order[cur] as usize;
            order[cur] = cur as u32;
            if next == start || next == cur {
                break;
            }
            v.swap(cur, next);
            cur = next;
        }
    }
}

/// One thread's part of a directory image scan: its names and directories in tree parts, its entries as tree
/// nodes (`pos` holds the inode until the scan ends), their ctimes beside them.
#[derive(Default)]
struct ScanVisitor {
    parts: Parts,
    nodes: Vec<Node>,
    ctimes: Vec<(i64, u32)>,
    bad: Vec<String>,
    /// The path being added.
    buf: String,
}

impl crate::fs::walk::Visitor for ScanVisitor {
    fn entry(&mut self, e: &crate::fs::walk::Entry<'_>) -> Result<bool> {
        let Some(name) = e.name_str() else {
            self.bad.push(e.rel());
            return Ok(false);
        };
        let rel = || {
            if e.parent_rel.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", e.parent_rel)
            }
        };
        let Some(st) = e.lstat().with_context(|| format!("lstat {:?}", rel()))? else {
            return Ok(false);
        };
        let kind = match at::file_type(&st) {
            rustix::fs::FileType::Directory => Kind::Dir,
            rustix::fs::FileType::RegularFile => Kind::File,
            rustix::fs::FileType::Symlink => Kind::Symlink,
            _ => return Ok(false),
        };
        let target = if kind == Kind::Symlink {
            let t = rustix::fs::readlinkat(e.dir, e.name, Vec::new())
                .with_context(|| format!("reading the symlink {:?}", rel()))?;
            Some(String::from_utf8_lossy(t.as_bytes()).into_owned())
        } else {
            None
        };
        self.buf.clear();
        if !e.parent_rel.is_empty() {
            self.buf.push_str(e.parent_rel);
            self.buf.push('/');
        }
        self.buf.push_str(name);
        let node = self.parts.node(
            &self.buf,
            &Entry {
                kind,
                mode: clean_mode(kind, st.st_mode),
                size: if kind == Kind::File {
                    st.st_size as u64
                } else {
                    0
                },
                mtime: st.st_mtime,
                mtime_nsec: st.st_mtime_nsec as u32,
                hash: None,
                target,
            },
            st.st_ino,
        )?;
        self.nodes.push(node);
        self.ctimes.push((st.st_ctime, st.st_ctime_nsec as u32));
        Ok(kind == Kind::Dir)
    }
}

/// The content hash of the file `rel` of the image rooted at `root`.
pub(super) fn hash_file(root: BorrowedFd<'_>, location: &Path, rel: &str) -> Result<[u8; 32]> {
    let mut dc = at::DirCache::new(rustix::io::dup(root)?);
    let mut file = open_in_directory(&mut dc, rel, location)?;
    let mut hs = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hs)?;
    Ok(*hs.finalize().as_bytes())
}

/// Streams the content of each file in `wanted` (indices into `tree`) to `f`.
pub(super) fn fetch(
    root: BorrowedFd<'_>,
    location: &Path,
    tree: &Tree,
    wanted: &[u32],
    f: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut dc = at::DirCache::new(rustix::io::dup(root)?);
    for &i in wanted {
        let i = i as usize;
        f(i, &mut open_in_directory(&mut dc, &tree.path(i), location)?)?;
    }
    Ok(())
}

/// Opens the file `rel` of a `directory` image for reading: one directory at a time from the
/// image root, never through a symlink.
fn open_in_directory(dc: &mut at::DirCache, rel: &str, location: &Path) -> Result<std::fs::File> {
    let (parent, name) = at::split(rel);
    let at::Opened::Dir(d) = dc.open(parent)? else {
        bail!(
            "{rel:?} vanished from the image directory {}",
            location.display()
        );
    };
    let fd = rustix::fs::openat(
        d,
        name,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| {
        format!(
            "opening {rel:?} in the image directory {}",
            location.display()
        )
    })?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::permute;

    #[test]
    fn permute_puts_each_item_where_the_order_says() {
        // v[k] becomes the old v[order[k]]: cycles of several lengths and a fixed point.
        let mut v = vec!['a', 'b', 'c', 'd', 'e', 'f'];
        let mut order = vec![2, 0, 1, 3, 5, 4];
        permute(&mut v, &mut order);
        assert_eq!(v, ['c', 'a', 'b', 'd', 'f', 'e']);
        let mut v: Vec<u32> = (0..1000).rev().collect();
        let mut order: Vec<u32> = (0..1000).rev().collect();
        permute(&mut v, &mut order);
        assert_eq!(v, (0..1000).collect::<Vec<u32>>());
    }
}
