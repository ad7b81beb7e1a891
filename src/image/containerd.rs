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

/// Pulls `reference` into containerd (`ctr images pull`, which also unpacks it as kubelet
/// would), from the registry the reference names. The pull runs in its own process group and
/// is killed with it at `timeout`, so a registry that hangs costs a known time. Nothing of the
/// code tree is touched here; a failed or killed pull leaves only what containerd itself keeps.
pub(super) fn pull(
    address: &Path,
    namespace: &str,
    reference: &str,
    timeout: std::time::Duration,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    use std::time::Instant;
    let mut cmd = ctr(address, namespace);
    cmd.args(["images", "pull", "--", reference])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    log::info!("pulling {reference} into containerd (namespace {namespace})");
    let mut child = cmd
        .spawn()
        .context("running `ctr images pull` (install the containerd package)")?;
    let mut stderr = child.stderr.take().context("ctr stderr")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(1 << 20).read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for ctr images pull")? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            if let Some(pgid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let said = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    // ctr's last line says why ("ctr: failed to resolve reference ...").
    let said = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    match status {
        None => {
            bail!(
            "pulling {reference}: no answer within {}s (image.pull_timeout_seconds), the pull was \
             killed{}; check that the registry is reachable, or pull it by hand",
            timeout.as_secs(),
            if said.is_empty() { String::new() } else { format!(" (ctr said: {said})") }
        )
        }
        Some(st) if !st.success() => bail!(
            "pulling {reference}: ctr images pull failed ({st}): {said}; check that the registry \
             is reachable and has that tag"
        ),
        Some(_) => Ok(()),
    }
}
