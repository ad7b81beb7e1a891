//! `kube`: runs the real `kubectl` for whoever speaks to the API server (the node component
//! today; `render` and a future `routing` command may too).
//!
//! We run the real `kubectl` rather than speak HTTP ourselves: it already knows every kubeconfig
//! form (exec plugins, client certificates, proxies) that the cluster's admins use. Each run is
//! an argument vector (no shell), with stdin closed and output captured, in its own process
//! group, killed at a hard deadline; all of one caller's runs share a budget, so a Puppet run
//! never waits on the API server longer than a known bound. Errors carry kubectl's own message
//! (without klog's prefixes) and a hint of what to do. This module knows nothing of Nodes or of
//! any policy: it must never decide what to change, and never run anything but the configured
//! kubectl.

use crate::config::Config;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// kubectl for one caller: each run bounded by `kubernetes.timeout_seconds`, all of them together
/// by `budget_runs` times that.
pub struct Kubectl<'a> {
    cfg: &'a Config,
    /// Who runs kubectl, for the message when the budget is used up ("the node component").
    who: &'static str,
    /// How many `timeout_seconds` all runs together may take.
    budget_runs: u32,
    /// When the caller must be done.
    deadline: Instant,
    /// The longest one kubectl run may take.
    per_run: Duration,
}

/// A finished kubectl run.
pub struct Ran {
    pub ok: bool,
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// What to tell a person when the API server answers NotFound, Forbidden or Invalid: these
/// depend on what the caller asked for.
pub struct Hints<'h> {
    pub not_found: &'h str,
    pub forbidden: &'h str,
    pub invalid: &'h str,
}

impl<'a> Kubectl<'a> {
    /// A runner whose budget starts now: `budget_runs` times `kubernetes.timeout_seconds`.
    pub fn new(cfg: &'a Config, who: &'static str, budget_runs: u32) -> Self {
        let per_run = Duration::from_secs(cfg.kubernetes.timeout_seconds);
        Kubectl {
            cfg,
            who,
            budget_runs,
            deadline: Instant::now() + per_run * budget_runs,
            per_run,
        }
    }

    /// An error that names the action, the cause (kubectl's stderr) and what to do.
    pub fn failure(&self, what: &str, ran: &Ran, hints: &Hints<'_>) -> anyhow::Error {
        let cause = cause(&ran.stderr);
        let hint = if ran.stderr.contains("(NotFound)") {
            hints.not_found.to_string()
        } else if ran.stderr.contains("(Forbidden)") {
            hints.forbidden.to_string()
        } else if ran.stderr.contains("Unauthorized") || ran.stderr.contains("provide credentials")
        {
            "the API server refused the kubeconfig's credentials: renew them".into()
        } else if ran.stderr.contains("is invalid") || ran.stderr.contains("(Invalid)") {
            hints.invalid.to_string()
        } else if ran.stderr.contains("Error from server") {
            "the API server answered with an error: see its message, then run again".into()
        } else {
            format!(
                "check that the API server in {} is reachable",
                self.kubeconfig_name()
            )
        };
        let code = ran
            .code
            .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
        anyhow!("{what}: kubectl failed ({code}): {cause}; {hint}")
    }

    fn kubeconfig_name(&self) -> String {
        match &self.cfg.kubernetes.kubeconfig {
            Some(p) => p.display().to_string(),
            None => "kubectl's default kubeconfig".into(),
        }
    }

    /// Runs kubectl with `args`, bounded by the deadline; `what` names the action in errors.
    /// A run that finished, whatever its exit code, is `Ok`; the caller judges [`Ran::ok`].
    pub fn run(&self, what: &str, args: &[&str]) -> Result<Ran> {
        let program = &self.cfg.kubernetes.kubectl;
        let now = Instant::now();
        let deadline = self.deadline.min(now + self.per_run);
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            bail!(
                "{what}: {} used up its {}s ({} x kubernetes.timeout_seconds); the API server is too slow, run again later",
                self.who,
                self.per_run.as_secs() * u64::from(self.budget_runs),
                self.budget_runs
            );
        }
        let mut cmd = Command::new(program);
        if let Some(k) = &self.cfg.kubernetes.kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        let secs = left.as_millis().div_ceil(1000).max(1);
        cmd.arg(format!("--request-timeout={secs}s"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that the kill reaches whatever kubectl starts (the
            // gcloud dispatcher runs the versioned kubectl as a child).
            .process_group(0);
        log::debug!("running {cmd:?}");
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{what}: kubectl {program:?} was not found; install kubectl or set kubernetes.kubectl to its absolute path"
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("{what}: starting kubectl {program:?}"))
            }
        };
        let (tx, rx) = mpsc::channel();
        for (i, pipe) in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .enumerate()
        {
            let tx = tx.clone();
            if let Some(mut pipe) = pipe {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = pipe.read_to_end(&mut buf);
                    let _ = tx.send((i, buf));
                });
            }
        }
        drop(tx);
        // The hard limit: a little after the request timeout that kubectl was given, so that its
        // own message wins when it keeps to it.
        let hard = deadline + Duration::from_millis(500);
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("{what}: waiting for kubectl"))?
            {
                break Some(status);
            }
            if Instant::now() >= hard {
                let pgid = rustix::process::Pid::from_raw(child.id() as i32);
                if let Some(pgid) = pgid {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let until = Instant::now() + Duration::from_millis(300);
        for _ in 0..2 {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok((0, b)) => stdout = b,
                Ok((_, b)) => stderr = b,
                Err(_) => break,
            }
        }
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let Some(status) = status else {
            let said = cause(&stderr);
            bail!(
                "{what}: kubectl did not finish within {}s (kubernetes.timeout_seconds: {}) and was killed{}; check that the API server in {} is reachable and answering",
                left.as_millis().div_ceil(1000),
                self.cfg.kubernetes.timeout_seconds,
                if said.is_empty() { String::new() } else { format!(" (it said: {said})") },
                self.kubeconfig_name()
            );
        };
        Ok(Ran {
            ok: status.success(),
            code: status.code(),
            stdout,
            stderr,
        })
    }
}

/// kubectl's stderr, reduced to what a person needs: its distinct lines without klog's
/// prefixes, the last three, on one line.
pub fn cause(stderr: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for l in stderr.lines() {
        let l = strip_klog(l.trim()).trim();
        // klog's structured form: `"Unhandled Error" err="..."`.
        let l = l
            .strip_prefix("\"Unhandled Error\" err=")
            .map_or(l, |e| e.trim_matches('"'));
        if l.is_empty() || lines.iter().any(|x| x == l) {
            continue;
        }
        let mut l = l.to_string();
        if l.len() > 300 {
            let mut cut = 300;
            while !l.is_char_boundary(cut) {
                cut -= 1;
            }
            l.truncate(cut);
            l.push('…');
        }
        lines.push(l);
    }
    let start = lines.len().saturating_sub(3);
    if lines.is_empty() {
        "no message".into()
    } else {
        lines[start..].join(" / ")
    }
}

/// `E1124 09:29:53.188284   15543 memcache.go:265] message` -> `message`.
fn strip_klog(line: &str) -> &str {
    let b = line.as_bytes();
    let klog = b.len() > 5
        && matches!(b[0], b'I' | b'W' | b'E' | b'F')
        && b[1..5].iter().all(u8::is_ascii_digit);
    if klog {
        if let Some(i) = line.find("] ") {
            return &line[i + 2..];
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klog_prefix_is_stripped() {
        assert_eq!(
            cause("E1124 09:29:53.188284   15543 memcache.go:265] couldn't get\nThe connection was refused\n"),
            "couldn't get / The connection was refused"
        );
    }
}
