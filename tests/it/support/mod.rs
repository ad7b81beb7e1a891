//! The world a test builds for itself: a temporary directory with a code tree, a state
//! directory, a metrics file and a config file pointing at them, and a runner for the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mw-experimental"))
}

/// A name no other test (or earlier run) uses: `prefix` + pid + counter.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub struct World {
    pub dir: tempfile::TempDir,
    /// The code tree (`code.path`), not created until a test does.
    pub code: PathBuf,
    pub state_dir: PathBuf,
    pub metrics: PathBuf,
    pub config: PathBuf,
}

impl World {
    /// A world whose config sets the paths into the temp dir, plus the YAML in `extra`
    /// (top-level keys other than code.path, state_dir, metrics_file; or override them).
    pub fn new(extra: &str) -> World {
        let dir = tempfile::Builder::new()
            .prefix("mwx-")
            .tempdir()
            .expect("tempdir");
        let code = dir.path().join("srv/mediawiki");
        let state_dir = dir.path().join("state");
        let metrics = dir.path().join("metrics/mw_experimental.prom");
        let config = dir.path().join("config.yaml");
        let w = World {
            dir,
            code,
            state_dir,
            metrics,
            config,
        };
        w.write_config(extra);
        w
    }

    /// Rewrites the config: the world's paths, then `extra`. `extra` may not repeat
    /// `state_dir` or `metrics_file`; a `code:` mapping in `extra` must give its own `path`.
    pub fn write_config(&self, extra: &str) {
        let mut text = format!(
            "state_dir: {}\nmetrics_file: {}\n",
            self.state_dir.display(),
            self.metrics.display()
        );
        if !extra.contains("\ncode:") && !extra.starts_with("code:") {
            text.push_str(&format!("code: {{ path: {} }}\n", self.code.display()));
        }
        text.push_str(extra);
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `mw-experimental --config <world> ARGS`.
    pub fn run(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&self.config).args(args);
        Out::of(cmd.output().expect("run mw-experimental"))
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&self.config);
        cmd
    }
}

/// A finished run: exit code, stdout, stderr, with assertions that print all three on failure.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn of(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code, want,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs a command, panicking with its output if it fails; returns stdout.
#[track_caller]
pub fn sh(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether a program is on PATH (tests of real tools fail loudly when it is not: the test
/// command installs them).
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

pub mod ats;
pub mod browser;
pub mod containerd;
pub mod kube;
pub mod kube_api;
pub mod oci;
pub mod perm;
pub mod puppet_stack;
pub mod systemd;
pub mod tls;
pub mod web;
