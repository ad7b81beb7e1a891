//! The private Puppet stack of `tests/puppet-stack` (a Puppet server, PuppetDB and PostgreSQL from
//! Debian's packages, on ports of their own under one temporary directory), stopped and removed
//! when dropped; agent runs as a node; PuppetDB read and written the way its clients do (curl
//! with a certificate the stack's CA signed).

#![allow(dead_code)]

use crate::support::sh;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/puppet-stack")
}

pub struct Stack {
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    _tmp: tempfile::TempDir,
}

impl Stack {
    /// Starts the stack; `certnames` may autosign. Takes about a minute (two JVMs).
    pub fn up(certnames: &[&str]) -> Stack {
        let tmp = tempfile::Builder::new()
            .prefix("mwx-stack-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("stack");
        let out = Command::new(script())
            .arg("up")
            .arg(&dir)
            .args(certnames)
            .output()
            .expect("tests/puppet-stack");
        assert!(
            out.status.success(),
            "tests/puppet-stack up failed\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("stack.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Stack {
            dir,
            env,
            _tmp: tmp,
        }
    }

    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from stack.env"))
    }

    /// The test Hiera layer of the server's environment (wins over hiera/'s levels).
    pub fn layer(&self) -> PathBuf {
        PathBuf::from(self.get("LAYER"))
    }

    /// `puppet agent -t` as `node` with `args`: (detailed exit code, stdout + stderr).
    pub fn agent(&self, node: &str, args: &[&str], env: &[(&str, &Path)]) -> (i32, String) {
        let mut cmd = Command::new(script());
        cmd.arg("agent").arg(&self.dir).arg(node).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("tests/puppet-stack agent");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The agent's ssldir of `node` (after its first run).
    pub fn ssldir(&self, node: &str) -> PathBuf {
        self.dir.join("agents").join(node).join("ssl")
    }

    fn curl(&self, as_node: &str) -> Command {
        let ssl = self.ssldir(as_node);
        let mut c = Command::new("curl");
        c.args(["-q", "-sS", "--fail-with-body", "--noproxy", "*"])
            .arg("--cacert")
            .arg(ssl.join("certs/ca.pem"))
            .arg("--cert")
            .arg(ssl.join(format!("certs/{as_node}.pem")))
            .arg("--key")
            .arg(ssl.join(format!("private_keys/{as_node}.pem")));
        c
    }

    /// A PuppetDB query (`endpoint` under /pdb/query/v4, `query` AST or PQL), as `as_node`.
    pub fn query(&self, as_node: &str, endpoint: &str, query: &str) -> Value {
        let url = format!("{}/pdb/query/v4{endpoint}", self.get("PUPPETDB_URL"));
        let out = sh(self
            .curl(as_node)
            .arg("-G")
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .arg(&url));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{url}: {e}: {out}"))
    }

    /// A command to PuppetDB's command API (as the agents' terminus sends them).
    pub fn command(
        &self,
        as_node: &str,
        command: &str,
        version: u32,
        certname: &str,
        body: &Value,
    ) {
        let url = format!(
            "{}/pdb/cmd/v1?command={command}&version={version}&certname={certname}",
            self.get("PUPPETDB_URL")
        );
        sh(self
            .curl(as_node)
            .args(["-X", "POST", "-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(body.to_string())
            .arg(&url));
    }

    /// The reports of `node` stored so far, newest first.
    pub fn reports(&self, as_node: &str, node: &str) -> Vec<Value> {
        let q = format!(
            r#"reports[hash, noop, status, receive_time, start_time] {{ certname = "{node}" order by start_time desc }}"#
        );
        match self.query(as_node, "", &q) {
            Value::Array(a) => a,
            other => panic!("reports: {other}"),
        }
    }

    /// Waits until PuppetDB has stored `count` reports of `node` (commands are processed in the
    /// background); the newest.
    pub fn wait_reports(&self, as_node: &str, node: &str, count: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let r = self.reports(as_node, node);
            if r.len() >= count {
                return r[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "PuppetDB stored {} reports of {node}, expected {count}",
                r.len()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The events of a stored report.
    pub fn events(&self, as_node: &str, report_hash: &str) -> Vec<Value> {
        let q = format!(
            r#"events[resource_type, resource_title, property, status, message, old_value, new_value] {{ report = "{report_hash}" }}"#
        );
        match self.query(as_node, "", &q) {
            Value::Array(a) => a,
            other => panic!("events: {other}"),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(&self.dir).output();
    }
}
