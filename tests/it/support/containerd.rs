//! A real containerd (Debian's) for one test: its own config, root, state and socket in a temp
//! dir; no CRI plugin, or (`start_cri`) its CRI plugin with the login and CA of a test registry,
//! as a node's containerd holds them. Images built offline with umoci are imported into
//! `k8s.io` with `ctr` (setting up a world; the code under test never runs `ctr`).
//! Drop kills the daemon, unmounts anything left under its directory and removes it.

use crate::support::sh;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_with(None, None)
    }

    /// A containerd without the overlayfs snapshotter (as on a kernel without overlayfs):
    /// images unpack with the native one.
    pub fn start_without_overlayfs() -> Containerd {
        Containerd::start_full(None, None, true)
    }

    /// With its socket at `socket` (outside its directory), so that a second one can take the
    /// place of the first, as a restarted containerd does.
    pub fn start_at(socket: &Path) -> Containerd {
        Containerd::start_with(None, Some(socket))
    }

    /// With the CRI plugin, which pulls from `registry` with its login and CA (the node's
    /// registry configuration; `mw-experimental` holds no credentials).
    pub fn start_cri(registry: &crate::support::web::Registry) -> Containerd {
        Containerd::start_with(Some(registry), None)
    }

    fn start_with(
        registry: Option<&crate::support::web::Registry>,
        socket: Option<&Path>,
    ) -> Containerd {
        Containerd::start_full(registry, socket, false)
    }

    fn start_full(
        registry: Option<&crate::support::web::Registry>,
        socket: Option<&Path>,
        no_overlayfs: bool,
    ) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("mwx-ctrd-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let socket = socket.map_or_else(|| d.join("c.sock"), Path::to_path_buf);
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
{disabled}
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
{cri}"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
            disabled = match (registry.is_some(), no_overlayfs) {
                (true, false) => "",
                (true, true) => r#"disabled_plugins = ["io.containerd.snapshotter.v1.overlayfs"]"#,
                (false, false) => r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#,
                (false, true) => {
                    r#"disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.overlayfs"]"#
                }
            },
            cri = registry.map(|r| cri_config(d, r)).unwrap_or_default(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd (apt-get install containerd)");
        let c = Containerd { dir, socket, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new("ctr")
                .arg("--address")
                .arg(&c.socket)
                .args(["version"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr ARGS` on this containerd, in the kubelet's namespace; its stdout.
    pub fn ctr(&self, args: &[&str]) -> String {
        sh(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args))
    }

    /// `ctr images import` of an OCI layout (as a tar archive), names under `repo`.
    pub fn import(&self, layout: &Path, repo: &str) {
        self.import_with(layout, repo, &["--no-unpack"]);
    }

    /// `ctr images import` of an OCI layout, unpacked into `snapshotter`'s snapshots as the
    /// kubelet's pull unpacks (containerd's own unpack: the same chain IDs, whiteouts, xattrs).
    pub fn import_unpacked(&self, layout: &Path, repo: &str, snapshotter: &str) {
        self.import_with(layout, repo, &["--snapshotter", snapshotter]);
    }

    fn import_with(&self, layout: &Path, repo: &str, how: &[&str]) {
        let tar = self
            .dir
            .path()
            .join(format!("import-{}.tar", crate::support::unique("i")));
        sh(Command::new("tar")
            .arg("-C")
            .arg(layout)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let tar_s = tar.to_string_lossy().into_owned();
        let mut args = vec!["images", "import"];
        args.extend_from_slice(how);
        args.extend(["--base-name", repo, tar_s.as_str()]);
        self.ctr(&args);
        let _ = std::fs::remove_file(&tar);
    }

    pub fn images(&self) -> String {
        sh(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "images", "ls", "-q"]))
    }
}

/// The CRI plugin's part of the config: its own stream server on loopback, no CNI needed for
/// pulls, and the registry's login and CA.
fn cri_config(d: &Path, r: &crate::support::web::Registry) -> String {
    let host = r.host();
    let mut s = format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{cni}"
"#,
        cni = d.join("cni").display()
    );
    if let Some((user, password, ca)) = &r.login {
        // containerd speaks plain HTTP to a loopback registry unless its endpoint says https.
        s.push_str(&format!(
            r#"  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{host}"]
    endpoint = ["https://{host}"]
  [plugins."io.containerd.grpc.v1.cri".registry.configs."{host}".auth]
    username = "{user}"
    password = "{password}"
  [plugins."io.containerd.grpc.v1.cri".registry.configs."{host}".tls]
    ca_file = "{ca}"
"#,
            ca = ca.display()
        ));
    }
    s
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Anything containerd mounted below its directory (snapshots), deepest first.
        let prefix = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}
