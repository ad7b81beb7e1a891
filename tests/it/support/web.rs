//! The request path's real servers for one test, each in the test's temp dir on its own
//! localhost port or socket, stopped (by its own pid) when dropped: Debian's `docker-registry`
//! (images pushed to it with `skopeo`), `php-fpm8.2` (workers as www-data, uid 33, like the
//! pod) and `nginx` (the web server in front of it, listening where a routing entry points).

#![allow(dead_code)]

use super::sh;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A localhost port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A child process in a process group of its own, killed with its workers (and reaped) on drop;
/// its log is a file next to its config.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    what: &'static str,
}

impl Daemon {
    pub fn spawn(what: &'static str, cmd: &mut Command, log: PathBuf) -> Daemon {
        let f = std::fs::File::create(&log).expect("log file");
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} (tests/install-deps installs it): {e}"));
        Daemon { child, log, what }
    }

    /// Waits until `ready` holds, or panics with the log.
    pub fn wait(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}): {}", self.what, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up: {}",
                self.what,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it now: SIGKILL to its whole process group, so php-fpm's and nginx's workers go
    /// with their master instead of living on as orphans.
    pub fn stop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Debian's `docker-registry` (distribution 2.8) on `127.0.0.1:port`, storage in `dir`.
pub struct Registry {
    pub port: u16,
    pub daemon: Daemon,
    /// With a login: (user, password, the CA's PEM file); the registry then speaks TLS only.
    pub login: Option<(String, String, PathBuf)>,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, false)
    }

    /// A registry that requires a login (htpasswd, bcrypt) over TLS with a certificate from a
    /// test CA (distribution sends basic-auth challenges only over TLS).
    pub fn start_secure(dir: &Path) -> Registry {
        Registry::start_with(dir, true)
    }

    fn start_with(dir: &Path, secure: bool) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let config = dir.join("registry.yml");
        let mut extra = String::new();
        let mut login = None;
        if secure {
            let user = crate::support::unique("u");
            let password = crate::support::unique("p");
            let hash = sh(Command::new("htpasswd").args(["-Bbn", &user, &password]));
            std::fs::write(dir.join("htpasswd"), hash.trim()).unwrap();
            let cert = crate::support::tls::server_cert("docker-registry");
            std::fs::write(dir.join("ca.pem"), &cert.ca_pem).unwrap();
            std::fs::write(dir.join("cert.pem"), &cert.cert_pem).unwrap();
            std::fs::write(dir.join("key.pem"), &cert.key_pem).unwrap();
            extra = format!(
                "  tls: {{ certificate: {c}, key: {k} }}\nauth:\n  htpasswd: {{ realm: mw-experimental-tests, path: {h} }}\n",
                c = dir.join("cert.pem").display(),
                k = dir.join("key.pem").display(),
                h = dir.join("htpasswd").display()
            );
            login = Some((user, password, dir.join("ca.pem")));
        }
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-only\n{extra}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut daemon = Daemon::spawn(
            "docker-registry",
            Command::new("docker-registry").arg("serve").arg(&config),
            dir.join("registry.log"),
        );
        if secure {
            daemon.wait(|| listening(port));
        } else {
            daemon.wait(|| http_get("127.0.0.1", port, "/v2/").is_ok_and(|r| r.status == 200));
        }
        Registry {
            port,
            daemon,
            login,
        }
    }

    /// `127.0.0.1:PORT`, the `docker.registry` of a release values file.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of `layout:tag` to `REGISTRY/name` (name with its tag).
    pub fn push(&self, layout: &Path, tag: &str, name: &str) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet"]);
        match &self.login {
            Some((user, password, ca)) => {
                c.arg(format!("--dest-creds={user}:{password}"));
                c.arg(format!(
                    "--dest-cert-dir={}",
                    ca.parent().unwrap().join("certs.d").display()
                ));
                let d = ca.parent().unwrap().join("certs.d");
                std::fs::create_dir_all(&d).unwrap();
                std::fs::copy(ca, d.join("ca.crt")).unwrap();
            }
            None => {
                c.arg("--dest-tls-verify=false");
            }
        }
        sh(c.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.host())));
    }
}

/// `php-fpm8.2` in the foreground: master as root (`-R`), workers as www-data (uid 33, the
/// pod's user), on a unix socket, with `PHP_INI_SCAN_DIR` adding `ini_dir` after Debian's own
/// conf.d, exactly as the rendered container's environment does.
pub struct PhpFpm {
    pub socket: PathBuf,
    pub daemon: Daemon,
}

impl PhpFpm {
    pub fn start(dir: &Path, ini_dir: &Path) -> PhpFpm {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("fpm.sock");
        let config = dir.join("php-fpm.conf");
        std::fs::write(
            &config,
            format!(
                "[global]\npid = {pid}\nerror_log = {log}\ndaemonize = no\n\
                 [www]\nuser = www-data\ngroup = www-data\nlisten = {sock}\n\
                 listen.owner = www-data\nlisten.group = www-data\nlisten.mode = 0660\n\
                 pm = static\npm.max_children = 2\ncatch_workers_output = yes\n",
                pid = dir.join("php-fpm.pid").display(),
                log = dir.join("php-fpm-error.log").display(),
                sock = socket.display(),
            ),
        )
        .unwrap();
        let mut daemon = Daemon::spawn(
            "php-fpm8.2",
            Command::new("php-fpm8.2")
                .args(["-R", "-F", "-y"])
                .arg(&config)
                .env("PHP_INI_SCAN_DIR", format!(":{}", ini_dir.display())),
            dir.join("php-fpm.out"),
        );
        let s = socket.clone();
        daemon.wait(|| s.exists());
        PhpFpm { socket, daemon }
    }
}

/// `nginx` in the foreground on `127.0.0.1:port`, serving `root` and passing `*.php` to
/// php-fpm's socket (Debian's `fastcgi_params`, `SCRIPT_FILENAME` under `root`).
pub struct Nginx {
    pub port: u16,
    pub daemon: Daemon,
}

impl Nginx {
    pub fn start(dir: &Path, port: u16, root: &Path, fpm_socket: &Path) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        let config = dir.join("nginx.conf");
        std::fs::write(
            &config,
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nuser www-data;\nevents {{}}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n  \
                 fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    \
                 location ~ \\.php$ {{\n      include /etc/nginx/fastcgi_params;\n      \
                 fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n      \
                 fastcgi_pass unix:{sock};\n    }}\n  }}\n}}\n",
                root = root.display(),
                sock = fpm_socket.display(),
            ),
        )
        .unwrap();
        let mut daemon = Daemon::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-c")
                .arg(&config)
                .arg("-p")
                .arg(dir)
                .args(["-g", "daemon off;"]),
            dir.join("nginx.out"),
        );
        daemon.wait(|| listening(port));
        Nginx { port, daemon }
    }
}

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// One HTTP/1.0 GET (a fresh connection: no keep-alive state between requests).
pub fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<Response> {
    http_get_with(host, port, path, &[], Duration::from_secs(10))
}

/// One HTTP/1.0 GET with extra request headers, waiting at most `limit` for each read.
pub fn http_get_with(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(limit))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Response {
        status,
        body: body.to_string(),
    })
}
