//! Debian's Apache Traffic Server 9.2 for one test: its own run root in the test's temp dir
//! (configs, logs, a small cache), listening on one localhost port, in its own process group
//! and stopped with it; a stand-in "production" origin (nginx answering one fixed body) for the
//! requests it does not route elsewhere; and HTTP requests that carry headers.

#![allow(dead_code)]

use super::web::{free_port, listening, Daemon, Response};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `traffic_server` on `127.0.0.1:port` with `remap` as its remap.config.
pub struct TrafficServer {
    pub port: u16,
    pub daemon: Daemon,
}

impl TrafficServer {
    /// `remap` gets `{port}` replaced by the port it listens on (a map rule names it).
    pub fn start(dir: &Path, remap: &str) -> TrafficServer {
        let port = free_port();
        let etc = dir.join("etc");
        for d in ["etc", "log", "run", "cache"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        std::fs::write(
            dir.join("runroot.yaml"),
            format!(
                "prefix: {d}\nexec_prefix: /usr\nbindir: /usr/bin\nsbindir: /usr/sbin\n\
                 sysconfdir: {d}/etc\ndatadir: {d}/share\nincludedir: /usr/include\n\
                 libdir: /usr/lib/trafficserver\nlibexecdir: /usr/lib/trafficserver/modules\n\
                 localstatedir: {d}/run\nruntimedir: {d}/run\nlogdir: {d}/log\ncachedir: {d}/cache\n"
            ),
        )
        .unwrap();
        // Debian's defaults for what this test does not set (error pages, ip_allow, logging).
        sh_cp("/etc/trafficserver/body_factory", &etc);
        for f in [
            "cache.config",
            "hosting.config",
            "ip_allow.yaml",
            "logging.yaml",
            "parent.config",
            "plugin.config",
            "sni.yaml",
            "socks.config",
            "splitdns.config",
            "strategies.yaml",
        ] {
            std::fs::copy(Path::new("/etc/trafficserver").join(f), etc.join(f)).unwrap();
        }
        for f in ["volume.config", "ssl_multicert.config"] {
            std::fs::write(etc.join(f), "").unwrap();
        }
        std::fs::write(etc.join("storage.config"), format!("{d}/cache 64M\n")).unwrap();
        // As root without changing user (the temp dir is root's); the client's Host header
        // goes to the origin as WMF's backends get it; no crash-log helper.
        std::fs::write(
            etc.join("records.config"),
            format!(
                "CONFIG proxy.config.http.server_ports STRING {port}:ip-in=127.0.0.1\n\
                 CONFIG proxy.config.admin.user_id STRING #-1\n\
                 CONFIG proxy.config.crash_log_helper STRING /bin/true\n\
                 CONFIG proxy.config.url_remap.pristine_host_hdr INT 1\n\
                 CONFIG proxy.config.http.cache.http INT 1\n"
            ),
        )
        .unwrap();
        std::fs::write(
            etc.join("remap.config"),
            remap.replace("{port}", &port.to_string()),
        )
        .unwrap();
        let mut daemon = Daemon::spawn(
            "traffic_server",
            Command::new("traffic_server")
                .arg(format!("--run-root={d}/runroot.yaml"))
                .current_dir(dir),
            dir.join("traffic_server.out"),
        );
        daemon.wait(|| listening(port));
        TrafficServer { port, daemon }
    }

    /// Its diags.log and stdout, for a failure message.
    pub fn logs(&self, dir: &Path) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(dir.join("log/diags.log")).unwrap_or_default(),
            self.daemon.log_text()
        )
    }
}

fn sh_cp(from: &str, to: &Path) {
    super::sh(Command::new("cp").args(["-r", from]).arg(to));
}

/// nginx on a localhost port answering every request with `body`: the origin a request that
/// is not routed elsewhere reaches.
pub struct Origin {
    pub port: u16,
    pub daemon: Daemon,
}

impl Origin {
    pub fn start(dir: &Path, body: &str) -> Origin {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{}}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n  \
                 fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    default_type text/plain;\n    \
                 location / {{ return 200 \"{body}\\n\"; }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let mut daemon = Daemon::spawn(
            "nginx (origin)",
            Command::new("nginx")
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-p")
                .arg(dir)
                .args(["-g", "daemon off;"]),
            dir.join("nginx.out"),
        );
        daemon.wait(|| listening(port));
        Origin { port, daemon }
    }
}

/// One HTTP/1.0 GET to `127.0.0.1:port` with `Host: 127.0.0.1:port` and `headers`.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    super::web::http_get_with("127.0.0.1", port, path, headers, Duration::from_secs(30))
}
