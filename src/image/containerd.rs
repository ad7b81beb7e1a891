//! containerd as an image store, through its own client `ctr` over containerd's socket: the
//! repository's images (`ctr images ls`) and blobs streamed out of its content store
//! (`ctr content get`). Nothing is pulled, mounted or unpacked, so a killed run leaves nothing
//! behind in containerd. It must never run a shell (`ctr` gets an argument vector), never leave
//! a child unreaped, and never let a failed `ctr` pass for a short blob: the read fails instead.

use super::Candidate;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

/// `ctr` for this containerd socket and namespace.
fn ctr(address: &Path, namespace: &str) -> Command {
    let mut c = Command::new("ctr");
    c.args(["--connect-timeout", "5s"])
        .arg("--address")
        .arg(address)
        .arg("--namespace")
        .arg(namespace);
    c
}

/// A blob's bytes, streamed from `ctr content get` (the caller has checked the digest).
pub(super) fn content_get(address: &Path, namespace: &str, digest: &str) -> Result<Box<dyn Read>> {
    let mut cmd = ctr(address, namespace);
    cmd.args(["content", "get", digest])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("running ctr (containerd's client; install the containerd package)")?;
    let out = child.stdout.take().context("ctr stdout")?;
    Ok(Box::new(ChildReader {
        child,
        out,
        what: format!("ctr content get {digest}"),
    }))
}

/// The images of `repo` that containerd has (`describe` names the store in messages).
pub(super) fn list(
    address: &Path,
    namespace: &str,
    repo: &str,
    describe: &str,
) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    let o = ctr(address, namespace)
        .args(["images", "ls"])
        .stdin(Stdio::null())
        .output()
        .context("running `ctr images ls` (install the containerd package)")?;
    if !o.status.success() {
        bail!(
            "listing images in {}: ctr images ls failed: {}; check that containerd runs \
             and that image.containerd_address is its socket",
            describe,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    // Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS; none of the first three has spaces.
    for line in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(reference), Some(_ty), Some(digest)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Some(tag) = reference
            .strip_prefix(repo)
            .and_then(|r| r.strip_prefix(':'))
        else {
            continue;
        };
        if tag.contains('/') || tag.contains('@') {
            continue;
        }
        out.push(Candidate {
            reference: reference.to_string(),
            tag: tag.to_string(),
            digest: digest.to_string(),
            created: None,
        });
    }
    Ok(out)
}

/// A child's stdout that fails the read at EOF if the child failed.
struct ChildReader {
    child: std::process::Child,
    out: std::process::ChildStdout,
    what: String,
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let st = self.child.wait()?;
            if !st.success() {
                return Err(std::io::Error::other(format!(
                    "{} failed ({st}): {}",
                    self.what,
                    err.trim()
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
