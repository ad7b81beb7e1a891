//! OCI image layouts built offline with umoci, for the tests that push images to a registry or
//! import them into containerd: each image is a base image's tree changed by a closure.

#![allow(dead_code)]

use super::{sh, unique};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Layout {
    pub dir: PathBuf,
    work: PathBuf,
}

impl Layout {
    /// An empty layout in `parent/layout`.
    pub fn new(parent: &Path) -> Layout {
        let dir = parent.join("layout");
        sh(Command::new("umoci").arg("init").arg("--layout").arg(&dir));
        Layout {
            dir,
            work: parent.to_path_buf(),
        }
    }

    /// Tags `tag`: `base`'s root file system (or an empty one) changed by `f`.
    pub fn image(&self, tag: &str, base: Option<&str>, f: impl FnOnce(&Path)) {
        let bundle = self.work.join(unique("bundle"));
        let from = base.unwrap_or(tag);
        if base.is_none() {
            sh(Command::new("umoci")
                .arg("new")
                .arg("--image")
                .arg(format!("{}:{tag}", self.dir.display())));
        }
        sh(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{from}", self.dir.display()))
            .arg(&bundle));
        f(&bundle.join("rootfs"));
        sh(Command::new("umoci")
            .arg("repack")
            .arg("--image")
            .arg(format!("{}:{tag}", self.dir.display()))
            .arg(&bundle));
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}

/// Writes `content` to `root/rel`, creating directories.
pub fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}
