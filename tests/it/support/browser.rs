//! Debian's Chromium, headless, as an engineer's browser: with an unpacked extension that sets
//! `X-Wikimedia-Debug` on every request to one origin (what WMF's X-Wikimedia-Debug browser
//! extension does, with the same declarativeNetRequest rule), or without it. Each load gets a
//! fresh profile in the caller's directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Browser {
    dir: PathBuf,
    /// The header's value, and the origin (`http://127.0.0.1:PORT`) it is set for.
    xwd: Option<(String, String)>,
}

impl Browser {
    pub fn new(dir: &Path) -> Browser {
        std::fs::create_dir_all(dir).unwrap();
        Browser {
            dir: dir.to_path_buf(),
            xwd: None,
        }
    }

    /// Sets `X-Wikimedia-Debug: value` on requests to `origin`.
    pub fn with_debug_header(mut self, origin: &str, value: &str) -> Self {
        self.xwd = Some((value.to_string(), origin.to_string()));
        self
    }

    fn run(&self, url: &str, action: &[String]) -> Output {
        let profile = tempfile::tempdir_in(&self.dir).unwrap();
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            // As root (the test runs as root): Chromium's sandbox needs an unprivileged user.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Nothing in root's home (dconf, caches): everything in the throw-away profile.
        .env("HOME", profile.path())
        .env("XDG_CONFIG_HOME", profile.path().join("config"))
        .env("XDG_CACHE_HOME", profile.path().join("cache"));
        if let Some((value, origin)) = &self.xwd {
            let ext = profile.path().join("xwd-extension");
            std::fs::create_dir_all(&ext).unwrap();
            std::fs::write(
                ext.join("manifest.json"),
                serde_json::json!({
                    "manifest_version": 3,
                    "name": "X-Wikimedia-Debug (test)",
                    "version": "1.0",
                    "permissions": ["declarativeNetRequest"],
                    "host_permissions": [format!("{origin}/*")],
                    "declarative_net_request": {"rule_resources": [
                        {"id": "xwd", "enabled": true, "path": "rules.json"}]}
                })
                .to_string(),
            )
            .unwrap();
            std::fs::write(
                ext.join("rules.json"),
                serde_json::json!([{
                    "id": 1, "priority": 1,
                    "action": {"type": "modifyHeaders", "requestHeaders": [
                        {"header": "X-Wikimedia-Debug", "operation": "set", "value": value}]},
                    "condition": {"urlFilter": format!("|{origin}/"), "resourceTypes": [
                        "main_frame", "sub_frame", "stylesheet", "script", "image",
                        "font", "xmlhttprequest", "other"]}
                }])
                .to_string(),
            )
            .unwrap();
            // Chromium 137+ takes --load-extension only with this feature switched off.
            cmd.arg(format!("--load-extension={}", ext.display()))
                .arg("--disable-features=DisableLoadExtensionCommandLineSwitch");
        }
        cmd.args(action)
            .arg(url)
            .output()
            .expect("chromium (tests/install-deps installs it)")
    }

    /// The DOM after the page loaded (`--dump-dom`).
    pub fn dump_dom(&self, url: &str) -> String {
        let o = self.run(url, &["--dump-dom".to_string()]);
        assert!(
            o.status.success(),
            "chromium --dump-dom {url}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A PNG of the page at `to` (best effort: for a failure's artefacts).
    pub fn screenshot(&self, url: &str, to: &Path) {
        let _ = self.run(url, &[format!("--screenshot={}", to.display())]);
    }
}
