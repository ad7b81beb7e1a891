//! A Debian 12 machine booted with its own systemd (tests/systemd-stack: systemd-nspawn over a
//! throw-away overlay of a cached debootstrap root file system), for the tests of the shipped
//! units under a real systemd. Commands run inside as root through nsenter. Drop powers it off
//! and removes its directory, however the test ends.

use super::Out;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stack() -> PathBuf {
    repo_root().join("tests/systemd-stack")
}

/// The package, built once per test binary: `MWX_DEB` (tests/run builds it), else
/// packaging/build-deb here.
pub fn package() -> PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        if let Some(deb) = std::env::var_os("MWX_DEB") {
            return PathBuf::from(deb);
        }
        let out = super::sh(&mut Command::new(repo_root().join("packaging/build-deb")));
        PathBuf::from(
            out.trim()
                .lines()
                .last()
                .expect("build-deb printed the .deb's path"),
        )
    })
    .clone()
}

pub struct Machine {
    /// The stack's directory (console log, containerd's root), removed by `down`.
    pub dir: PathBuf,
    /// Where the host directory `share` is seen inside (read-write).
    pub share: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Machine {
    /// Boots a container in which the repository is `/mwx/repo` (read-only), the package
    /// `/mwx/mw-experimental.deb`, and `share` (a host directory the test fills) `/mwx/share`.
    pub fn boot(share: &Path) -> Machine {
        let tmp = tempfile::Builder::new()
            .prefix("mwx-systemd-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().join("stack");
        let deb = package();
        let out = Command::new(stack())
            .arg("up")
            .arg(&dir)
            .arg(format!("{}:/mwx/repo:ro", repo_root().display()))
            .arg(format!("{}:/mwx/mw-experimental.deb:ro", deb.display()))
            .arg(format!("{}:/mwx/share", share.display()))
            .output()
            .expect("running tests/systemd-stack up");
        let m = Machine {
            dir,
            share: PathBuf::from("/mwx/share"),
            _tmp: tmp,
        };
        assert!(
            out.status.success(),
            "tests/systemd-stack up failed (run tests/install-deps: debootstrap, systemd-container)\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    /// Runs `args` inside, as root.
    pub fn run(&self, args: &[&str]) -> Out {
        let o = Command::new(stack())
            .arg("exec")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tests/systemd-stack exec");
        Out::of(o)
    }

    /// Runs a bash script inside (the test's own text, never data), as root.
    pub fn bash(&self, script: &str) -> Out {
        self.run(&["bash", "-euo", "pipefail", "-c", script])
    }

    /// Like `bash`, but panics with the output unless it succeeds; returns stdout.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let o = self.bash(script);
        assert_eq!(
            o.code, 0,
            "inside the container: {script}\n--- stdout\n{}\n--- stderr\n{}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    /// Waits until `script` succeeds inside, or panics after `timeout` with its last output.
    #[track_caller]
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.bash(script);
            if o.code == 0 {
                return o.stdout;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}\n--- journal\n{}",
                    o.stdout,
                    o.stderr,
                    self.bash("journalctl -b --no-pager -n 60").stdout
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        self.run(&["systemctl", "show", "-p", prop, "--value", unit])
            .stdout
            .trim()
            .to_string()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new(stack())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}
