//! PuppetDB, read the way a Puppet node reads it: HTTPS with the node's own certificate and key,
//! verified against the Puppet CA, through the real `curl` (an argument vector, never a shell;
//! stdin closed; `~/.curlrc` and proxies ignored; bounded by `--max-time`). PuppetDB refuses
//! clients without a certificate its CA signed, so this is the only way in.
//!
//! It only ever queries (GET, PQL). It must never submit a command to PuppetDB, never send a
//! certificate to anything but the URL it was given, and never follow a redirect.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The client certificate, its key and the CA, as a Puppet agent keeps them in its ssldir.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// The files of `certname` in a Puppet ssldir (`certs/ca.pem`, `certs/NAME.pem`,
    /// `private_keys/NAME.pem`). Without a certname, the one private key there is taken (an
    /// agent has exactly one); several or none is an error that lists what to pass.
    pub fn from_ssldir(ssldir: &Path, certname: Option<&str>) -> Result<Tls> {
        let keys = ssldir.join("private_keys");
        let name = match certname {
            Some(n) => n.to_string(),
            None => {
                let mut names: Vec<String> = std::fs::read_dir(&keys)
                    .with_context(|| {
                        format!(
                            "reading {}: is this a Puppet agent's ssldir? Pass --ssldir DIR (`puppet config print ssldir`)",
                            keys.display()
                        )
                    })?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".pem"))
                            .map(String::from)
                    })
                    .collect();
                names.sort();
                match names.len() {
                    1 => names.remove(0),
                    0 => bail!(
                        "no private key in {}: this host has no Puppet certificate; pass --ssldir and --certname of one that has",
                        keys.display()
                    ),
                    _ => bail!(
                        "{} holds keys for {}: pass --certname NAME to say which certificate to use",
                        keys.display(),
                        names.join(", ")
                    ),
                }
            }
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("--certname {name:?} is not a certificate name");
        }
        let tls = Tls {
            ca: ssldir.join("certs/ca.pem"),
            cert: ssldir.join("certs").join(format!("{name}.pem")),
            key: keys.join(format!("{name}.pem")),
        };
        for (what, p) in [
            ("the CA certificate", &tls.ca),
            ("the client certificate", &tls.cert),
            ("the private key", &tls.key),
        ] {
            if !p.is_file() {
                bail!(
                    "{what} {} does not exist: run on a host with a signed Puppet certificate, or pass --ssldir/--certname",
                    p.display()
                );
            }
        }
        Ok(tls)
    }
}

/// A PuppetDB at `url` (`https://HOST:PORT`, no path).
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    tls: Tls,
    timeout: Duration,
}

impl Client {
    /// Refuses anything but an `https://` URL without a path, query or credentials.
    pub fn new(url: &str, tls: Tls, timeout: Duration) -> Result<Client> {
        let url = url.trim_end_matches('/');
        let rest = url.strip_prefix("https://").with_context(|| {
            format!("--puppetdb {url:?}: PuppetDB must be reached over https:// (e.g. https://puppetdb.example.org:8081)")
        })?;
        if rest.is_empty()
            || rest.contains(['/', '?', '#', '@', ' '])
            || rest.chars().any(|c| c.is_control())
        {
            bail!("--puppetdb {url:?} is not https://HOST[:PORT] (no path, query or user)");
        }
        Ok(Client {
            url: url.to_string(),
            tls,
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs a PQL query against `/pdb/query/v4`; the JSON array it answers.
    pub fn query(&self, pql: &str) -> Result<Vec<Value>> {
        let endpoint = format!("{}/pdb/query/v4", self.url);
        let secs = self.timeout.as_secs().max(1).to_string();
        let out = Command::new("curl")
            // -q first: no ~/.curlrc. No proxy, no redirects, https only, bounded.
            .args(["-q", "--silent", "--show-error", "--noproxy", "*"])
            .args(["--proto", "=https", "--max-redirs", "0"])
            .args(["--connect-timeout", &secs, "--max-time", &secs])
            .arg("--cacert")
            .arg(&self.tls.ca)
            .arg("--cert")
            .arg(&self.tls.cert)
            .arg("--key")
            .arg(&self.tls.key)
            .args(["--get", "--data-urlencode"])
            .arg(format!("query={pql}"))
            .args(["--write-out", "\n%{http_code}"])
            .arg(&endpoint)
            .stdin(Stdio::null())
            .output()
            .context("running curl to query PuppetDB (is curl installed?)")?;
        if !out.status.success() {
            bail!(
                "querying PuppetDB at {}: curl failed ({}): {}; check the URL, that PuppetDB runs, and that its certificate is signed by {}",
                self.url,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.tls.ca.display()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        if status.trim() != "200" {
            bail!(
                "querying PuppetDB at {}: it answered HTTP {}: {}",
                self.url,
                status.trim(),
                body.trim().chars().take(500).collect::<String>()
            );
        }
        match serde_json::from_str::<Value>(body).with_context(|| {
            format!(
                "PuppetDB at {} answered something that is not JSON",
                self.url
            )
        })? {
            Value::Array(rows) => Ok(rows),
            other => bail!(
                "PuppetDB at {} answered {} where a list of rows was expected",
                self.url,
                other.to_string().chars().take(200).collect::<String>()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Tls {
        Tls {
            ca: "/ca".into(),
            cert: "/c".into(),
            key: "/k".into(),
        }
    }

    #[test]
    fn only_https_urls_without_path_are_taken() {
        let t = Duration::from_secs(5);
        assert!(Client::new("https://puppetdb.example.org:8081/", tls(), t).is_ok());
        for bad in [
            "http://puppetdb:8080",
            "https://",
            "https://puppetdb:8081/pdb/query",
            "https://user@puppetdb:8081",
            "puppetdb:8081",
        ] {
            assert!(Client::new(bad, tls(), t).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn ssldir_without_keys_says_what_to_pass() {
        let d = tempfile::tempdir().unwrap();
        let e = Tls::from_ssldir(d.path(), None).unwrap_err();
        assert!(format!("{e:#}").contains("--ssldir"), "{e:#}");
        std::fs::create_dir_all(d.path().join("private_keys")).unwrap();
        std::fs::write(d.path().join("private_keys/a.pem"), "").unwrap();
        std::fs::write(d.path().join("private_keys/b.pem"), "").unwrap();
        let e = Tls::from_ssldir(d.path(), None).unwrap_err();
        assert!(format!("{e:#}").contains("a, b: pass --certname"), "{e:#}");
        let e = Tls::from_ssldir(d.path(), Some("a")).unwrap_err();
        assert!(
            format!("{e:#}").contains("certs/ca.pem does not exist"),
            "{e:#}"
        );
        assert!(Tls::from_ssldir(d.path(), Some("../x")).is_err());
    }
}
