//! The shipped units under a real systemd: a Debian 12 container booted with systemd-nspawn
//! (tests/systemd-stack), the built .deb installed in it, the module applied with `puppet apply`
//! inside. What an SRE would check on a node: Puppet starts the timer and the path unit with
//! the switch on and stops them with it off; a release file replaced by rename (as rsync and
//! scap do) starts one sync, and the tree follows; a hold stops it; the journal and `systemctl
//! status` show the sync's summary; a failing sync leaves the unit failed, in the metrics and in
//! `status`; and every unit passes `systemd-analyze verify` and `security`.

use crate::support::kube_api::{node, ApiServer};
use crate::support::oci::{put, Layout};
use crate::support::systemd::Machine;
use crate::support::{have, unique};
use std::time::Duration;

const REGISTRY: &str = "docker-registry.example";
const NAME: &str = "restricted/mediawiki-multiversion";
const SYNC: &str = "mw-experimental-sync.service";
const TIMER: &str = "mw-experimental-sync.timer";
const PATH_UNIT: &str = "mw-experimental-sync.path";
const WATCH: &str = "mw-experimental-watch.service";
const UNITS: [&str; 4] = [SYNC, TIMER, PATH_UNIT, WATCH];
const RELEASE_DIR: &str = "/etc/helmfile-defaults/mediawiki/release";
const RELEASE: &str = "/etc/helmfile-defaults/mediawiki/release/mw-experimental-test-eqiad.yaml";
const OLD: &str = "2026-11-20-101010-publish";
const NEW: &str = "2026-11-21-101010-publish";
const MISSING: &str = "2026-11-22-101010-publish";

/// What scap writes (yaml.dump of _HelmfileReleaseValues.to_values()), naming `tag`.
fn release_text(tag: &str) -> String {
    format!(
        "docker:\n  registry: {REGISTRY}\nmain_app:\n  image: {NAME}:{tag}\nmw:\n  httpd:\n    image_tag: restricted/mediawiki-webserver:{tag}\n"
    )
}

/// Replaces the release file the way rsync does: a temporary file in the same directory,
/// written and closed, then renamed over the old one.
fn replace_release(m: &Machine, tag: &str) {
    m.ok(&format!(
        "tmp=$(mktemp {RELEASE_DIR}/.mw-experimental-test-eqiad.yaml.XXXXXX)\n\
         printf '%s' '{}' >\"$tmp\"\nchmod 0644 \"$tmp\"\nmv -f \"$tmp\" {RELEASE}",
        release_text(tag)
    ));
}

/// The results of the sync service's start jobs so far, oldest first, from systemd's own
/// journal entries about the unit ("done" for a run that succeeded, "failed"...).
fn sync_runs(m: &Machine) -> Vec<String> {
    let out = m.ok(&format!(
        "journalctl --no-pager -o json UNIT={SYNC} JOB_TYPE=start _PID=1"
    ));
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["JOB_RESULT"].as_str().map(str::to_string))
        .collect()
}

/// Waits until the sync has run `n` times in all, then a while longer, and checks that no
/// further run started: what one trigger is supposed to cause.
#[track_caller]
fn expect_runs(m: &Machine, n: usize, what: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sync_runs(m).len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    // A second trigger (an inotify event the first run did not swallow) would start within
    // this time; none may.
    std::thread::sleep(Duration::from_secs(3));
    let runs = sync_runs(m);
    assert_eq!(
        runs.len(),
        n,
        "{what}: the sync ran {} times in all, not {n}: {runs:?}\n--- journal\n{}",
        runs.len(),
        m.bash(&format!(
            "journalctl --no-pager -u {SYNC} -u {PATH_UNIT} -n 80"
        ))
        .stdout
    );
    assert_ne!(
        m.show(SYNC, "ActiveState"),
        "activating",
        "{what}: a sync still runs"
    );
    runs
}

/// The lines the sync itself wrote to the journal (stdout and stderr), in its last run.
fn last_run_lines(m: &Machine) -> String {
    let id = m.show(SYNC, "InvocationID");
    m.ok(&format!(
        "journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={id}"
    ))
}

fn unit_state(m: &Machine, unit: &str) -> (String, String) {
    (
        m.run(&["systemctl", "is-enabled", unit])
            .stdout
            .trim()
            .to_string(),
        m.run(&["systemctl", "is-active", unit])
            .stdout
            .trim()
            .to_string(),
    )
}

/// The tree's content, as `path=content` lines (what the images differ in).
fn tree(m: &Machine) -> String {
    m.bash(
        "cd /srv/mediawiki 2>/dev/null && find . -type f -name '*.php' | sort | \
         while read -r f; do printf '%s=%s' \"$f\" \"$(cat \"$f\")\"; echo; done",
    )
    .stdout
}

fn metric(m: &Machine, name: &str) -> Option<String> {
    let text = m
        .run(&["cat", "/var/lib/prometheus/node.d/mw_experimental.prom"])
        .stdout;
    text.lines()
        .find(|l| l.starts_with(name))
        .map(|l| l[name.len()..].trim().to_string())
}

/// The package installed and its units in place, with what a WMF node has besides: the
/// deploy user and node-exporter's textfile directory.
fn install(m: &Machine) {
    m.ok("dpkg -i /mwx/mw-experimental.deb >/dev/null");
    for unit in UNITS {
        m.ok(&format!("test -f /lib/systemd/system/{unit}"));
    }
    m.ok("useradd --system mwdeploy && mkdir -p /var/lib/prometheus/node.d");
}

#[test]
fn puppet_starts_the_triggers_a_replaced_release_file_syncs_once_a_hold_stops_it_a_failure_shows() {
    for tool in ["umoci", "kubectl", "systemd-nspawn", "debootstrap"] {
        assert!(have(tool), "{tool} is missing: run tests/install-deps");
    }
    let share = tempfile::Builder::new()
        .prefix("mwx-systemd-share-")
        .tempdir()
        .unwrap();
    let s = share.path();
    // Two images of the repository in an OCI layout: the tree as each release has it.
    let layout = Layout::new(s);
    layout.image(OLD, None, |root| {
        put(root, "srv/mediawiki/index.php", "<?php // index\n");
        put(root, "srv/mediawiki/php-1.46/version.php", OLD);
    });
    layout.image(NEW, Some(OLD), |root| {
        put(root, "srv/mediawiki/php-1.46/version.php", NEW);
    });
    // The test API server on the host (the container shares its network) and the host's
    // kubectl inside, for the `node` component.
    let name = unique("wikikube-worker-exp");
    let api = ApiServer::start(vec![node(&name, &[], &[])]);
    let kubectl = std::fs::canonicalize(
        std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
            .unwrap(),
    )
    .unwrap();
    std::fs::copy(&kubectl, s.join("kubectl")).unwrap();
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let layer = |enabled: bool| {
        format!(
            "---\n\
             profile::mw_experimental::enabled: {enabled}\n\
             profile::mw_experimental::manage_package: false\n\
             profile::mw_experimental::node_name: {name}\n\
             profile::mw_experimental::kubectl: /mwx/share/kubectl\n\
             profile::mw_experimental::kubernetes_timeout: 5\n\
             profile::mw_experimental::kubeconfig: {kubeconfig:?}\n\
             profile::mw_experimental::image_source: oci-layout\n\
             profile::mw_experimental::image_location: /mwx/share/layout\n\
             profile::mw_experimental::image_repository: {REGISTRY}/{NAME}\n\
             profile::mw_experimental::image_release_file: {RELEASE}\n\
             profile::mw_experimental::image_pull: false\n"
        )
    };
    std::fs::write(s.join("on.yaml"), layer(true)).unwrap();
    std::fs::write(s.join("off.yaml"), layer(false)).unwrap();

    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("systemd.rs: {what} at {:.1} s", t0.elapsed().as_secs_f64());
    let m = Machine::boot(s);
    step("booted");
    install(&m);
    step("installed");
    m.ok(&format!("mkdir -p {RELEASE_DIR}"));
    replace_release(&m, OLD);

    // --- Puppet, switch on: the timer and the path unit enabled and running, the watch
    // service off (a release file names the image), the drop-in that watches the release file.
    let apply = m.bash("/mwx/repo/tests/puppet-apply /mwx/share/on.yaml");
    step("puppet apply, switch on");
    assert_eq!(
        apply.code, 2,
        "puppet apply (switch on) should apply changes without failures\n{}{}",
        apply.stdout, apply.stderr
    );
    let on = ("enabled".to_string(), "active".to_string());
    assert_eq!(unit_state(&m, TIMER), on, "{TIMER}");
    assert_eq!(unit_state(&m, PATH_UNIT), on, "{PATH_UNIT}");
    assert_eq!(
        unit_state(&m, WATCH),
        ("disabled".into(), "inactive".into()),
        "{WATCH}"
    );
    let paths = m.show(PATH_UNIT, "Paths");
    assert!(
        paths.contains(&format!("{RELEASE} (PathChanged)"))
            && paths.contains("/run/mw-experimental/image-event (PathChanged)"),
        "{PATH_UNIT} watches {paths:?}"
    );
    // A second run changes nothing.
    let again = m.bash("/mwx/repo/tests/puppet-apply /mwx/share/on.yaml");
    step("puppet apply again");
    assert_eq!(
        again.code, 0,
        "a second puppet apply should change nothing\n{}{}",
        again.stdout, again.stderr
    );
    let before = sync_runs(&m).len();

    // --- The release file replaced by rename: one sync, and the tree is the new release's.
    replace_release(&m, NEW);
    let runs = expect_runs(&m, before + 1, "the release file replaced");
    step("the sync the release file started");
    assert_eq!(runs.last().unwrap(), "done", "{runs:?}");
    assert!(
        tree(&m).contains(&format!("./php-1.46/version.php={NEW}")),
        "the tree did not follow the release file:\n{}",
        tree(&m)
    );
    // The sync's one-line summary, in the journal and in `systemctl status`.
    let lines = last_run_lines(&m);
    let summary = lines
        .lines()
        .find(|l| l.starts_with("sync"))
        .unwrap_or_else(|| panic!("no summary line from the sync in the journal:\n{lines}"))
        .to_string();
    let status = m.run(&["systemctl", "status", "--no-pager", "--lines=20", SYNC]);
    assert!(
        status.stdout.contains(&summary),
        "systemctl status lacks the summary {summary:?}:\n{}",
        status.stdout
    );
    assert_eq!(
        metric(&m, "mw_experimental_last_run_success{command=\"sync\"}").as_deref(),
        Some("1")
    );

    // --- A hold: the next replacement starts one run, which only says it is held.
    m.ok("mw-experimental hold --reason 'systemd test' --for 1h >/dev/null");
    let before = sync_runs(&m).len();
    replace_release(&m, OLD);
    expect_runs(&m, before + 1, "the release file replaced under a hold");
    let held = m.ok(&format!(
        "journalctl --no-pager -o cat _SYSTEMD_UNIT={SYNC} | grep -c 'hold in force' || true"
    ));
    assert_eq!(held.trim(), "1", "the held run is logged once");
    assert!(
        tree(&m).contains(&format!("./php-1.46/version.php={NEW}")),
        "a held sync moved the tree:\n{}",
        tree(&m)
    );
    assert_eq!(
        metric(&m, "mw_experimental_sync_held").as_deref(),
        Some("1")
    );
    m.ok("mw-experimental release >/dev/null");

    // --- A failing sync: the release file names an image the node lacks, and pulling is off.
    let before = sync_runs(&m).len();
    replace_release(&m, MISSING);
    let runs = expect_runs(&m, before + 1, "the release file naming a missing image");
    assert_eq!(runs.last().unwrap(), "failed", "{runs:?}");
    assert_eq!(m.show(SYNC, "ActiveState"), "failed");
    assert!(
        last_run_lines(&m).contains(MISSING),
        "the failed run's journal does not name the image:\n{}",
        last_run_lines(&m)
    );
    assert_eq!(
        metric(&m, "mw_experimental_last_run_success{command=\"sync\"}").as_deref(),
        Some("0")
    );
    let status = m.run(&["mw-experimental", "status"]);
    let first = status.stdout.lines().next().unwrap_or_default();
    assert!(
        first.contains("last sync failed"),
        "status's summary line does not say the sync failed: {first}"
    );
    let last_sync = status
        .stdout
        .lines()
        .find(|l| l.starts_with("last sync"))
        .unwrap_or_default();
    assert!(
        last_sync.contains("error") && last_sync.contains(MISSING),
        "mw-experimental status does not show the failed sync:\n{}{}",
        status.stdout,
        status.stderr
    );
    assert!(
        tree(&m).contains(&format!("./php-1.46/version.php={NEW}")),
        "a failed sync changed the tree:\n{}",
        tree(&m)
    );

    // --- Puppet, switch off: every trigger stopped and disabled; a replaced file starts nothing.
    step("hold, failing sync");
    let apply = m.bash("/mwx/repo/tests/puppet-apply /mwx/share/off.yaml");
    step("puppet apply, switch off");
    assert_eq!(
        apply.code, 2,
        "puppet apply (switch off) should apply changes without failures\n{}{}",
        apply.stdout, apply.stderr
    );
    for unit in [TIMER, PATH_UNIT, WATCH] {
        assert_eq!(
            unit_state(&m, unit),
            ("disabled".into(), "inactive".into()),
            "{unit} with the switch off"
        );
    }
    let before = sync_runs(&m).len();
    replace_release(&m, NEW);
    expect_runs(&m, before, "the release file replaced with the switch off");
    drop(api);
}

#[test]
fn every_unit_verifies_and_every_service_is_rated_2_or_lower() {
    let share = tempfile::Builder::new()
        .prefix("mwx-systemd-share-")
        .tempdir()
        .unwrap();
    let m = Machine::boot(share.path());
    install(&m);
    for unit in UNITS {
        let path = format!("/lib/systemd/system/{unit}");
        let verify = m.run(&["systemd-analyze", "verify", &path]);
        assert!(
            verify.code == 0 && verify.stdout.trim().is_empty() && verify.stderr.trim().is_empty(),
            "systemd-analyze verify {unit} is not clean (exit {}):\n{}{}",
            verify.code,
            verify.stdout,
            verify.stderr
        );
        if !unit.ends_with(".service") {
            continue;
        }
        let sec = m.run(&[
            "systemd-analyze",
            "security",
            "--offline=true",
            "--no-pager",
            &path,
        ]);
        let level = sec
            .stdout
            .lines()
            .find_map(|l| l.split("Overall exposure level for").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no overall exposure level from systemd-analyze security {unit}:\n{}{}",
                    sec.stdout, sec.stderr
                )
            });
        assert!(
            level <= 2.0,
            "systemd-analyze security rates {unit} at {level}, above 2.0:\n{}",
            sec.stdout
        );
    }
}

/// The acceptance case of the pull: the release file names an image the node lacks; the sync
/// that the path unit starts, in the shipped sandbox (no network, AF_UNIX only), has it pulled
/// through containerd's CRI image service from a registry that wants a login over TLS. The login
/// and the CA are in containerd's configuration only. Then, with the registry down, the next
/// release fails the unit with a clear error within the pull timeout, the tree unchanged.
#[test]
fn a_missing_release_image_is_pulled_through_cri_by_the_sync_the_path_unit_starts() {
    for tool in ["umoci", "skopeo", "docker-registry", "htpasswd"] {
        assert!(have(tool), "{tool} is missing: run tests/install-deps");
    }
    let share = tempfile::Builder::new()
        .prefix("mwx-systemd-share-")
        .tempdir()
        .unwrap();
    let s = share.path();
    // The registry runs on the host: the container shares its network (127.0.0.1).
    let mut reg = crate::support::web::Registry::start_secure(&s.join("registry"));
    let (user, password, _) = reg.login.clone().unwrap();
    let layout = Layout::new(s);
    layout.image(OLD, None, |root| {
        put(root, "srv/mediawiki/index.php", "<?php // index\n");
        put(root, "srv/mediawiki/php-1.46/version.php", OLD);
    });
    reg.push(&layout.dir, OLD, &format!("{NAME}:{OLD}"));
    let host = reg.host();
    let repo = format!("{host}/{NAME}");

    let m = Machine::boot(s);
    install(&m);
    // containerd's CRI plugin with the registry's login and CA, as a node's containerd has them.
    m.ok(&format!(
        "cat >/etc/containerd/config.toml <<'TOML'\n\
         version = 2\n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20 disable_apparmor = true\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n\
         \x20   endpoint = [\"https://{host}\"]\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{host}\".auth]\n\
         \x20   username = \"{user}\"\n\
         \x20   password = \"{password}\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{host}\".tls]\n\
         \x20   ca_file = \"/mwx/share/registry/ca.pem\"\n\
         TOML\n\
         systemctl restart containerd\n\
         for i in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done\n\
         ctr version >/dev/null"
    ));
    // The tool's configuration, as Puppet writes it (Puppet is not the point here): the
    // release file, pulling on, and no credential anywhere.
    m.ok(&format!(
        "mkdir -p /etc/mw-experimental {RELEASE_DIR}\n\
         cat >/etc/mw-experimental/config.yaml <<'YAML'\n\
         enabled: true\n\
         image:\n\
         \x20 source: containerd\n\
         \x20 repository: {repo}\n\
         \x20 release_file: {RELEASE}\n\
         \x20 pull: true\n\
         \x20 pull_timeout_seconds: 20\n\
         YAML\n\
         mw-experimental apply group permissions >/dev/null\n\
         mkdir -p /etc/systemd/system/{PATH_UNIT}.d\n\
         printf '[Path]\\nPathChanged={RELEASE}\\n' >/etc/systemd/system/{PATH_UNIT}.d/release.conf\n\
         systemctl daemon-reload\n\
         systemctl start {PATH_UNIT}"
    ));
    let config = m.ok("cat /etc/mw-experimental/config.yaml");
    assert!(!config.contains(&password) && !config.contains(&user));
    assert!(
        !m.ok("ctr -n k8s.io images ls -q").contains(OLD),
        "the node has the image already"
    );

    // The release file names an image only the registry has: one sync, which pulls it.
    replace_release_on(&m, &host, OLD);
    let runs = expect_runs(&m, 1, "the release file naming an image to pull");
    assert_eq!(runs, ["done"], "the sync failed:\n{}", last_run_lines(&m));
    assert!(
        tree(&m).contains(&format!("./php-1.46/version.php={OLD}")),
        "the tree is not the pulled image's:\n{}",
        tree(&m)
    );
    let images = m.ok("ctr -n k8s.io images ls -q");
    assert!(images.contains(&format!("{repo}:{OLD}")), "{images}");
    // containerd pulled it, through its CRI image service.
    let log = m.ok("journalctl --no-pager -o cat -u containerd");
    assert!(
        log.contains(&format!("PullImage \\\"{repo}:{OLD}\\\"")),
        "containerd's journal does not show the CRI pull:\n{log}"
    );

    // The registry down: the next release's image cannot be had. The unit fails within the pull
    // timeout, with a message that says what failed, and the tree stays.
    reg.daemon.stop();
    let started = std::time::Instant::now();
    replace_release_on(&m, &host, NEW);
    let runs = expect_runs(&m, 2, "the release file naming an image, registry down");
    let took = started.elapsed();
    assert_eq!(runs.last().unwrap(), "failed", "{runs:?}");
    assert!(
        took < Duration::from_secs(20 + 15),
        "the failing pull took {took:?}, beyond image.pull_timeout_seconds (20 s)"
    );
    let lines = last_run_lines(&m);
    assert!(
        lines.contains(&format!("pulling {repo}:{NEW}"))
            && lines.contains("tree was left as it is"),
        "the failed run does not say what failed:\n{lines}"
    );
    assert!(
        tree(&m).contains(&format!("./php-1.46/version.php={OLD}")),
        "a failed pull changed the tree:\n{}",
        tree(&m)
    );
}

/// `replace_release`, with the release file naming `registry`.
fn replace_release_on(m: &Machine, registry: &str, tag: &str) {
    let text = release_text(tag).replace(REGISTRY, registry);
    m.ok(&format!(
        "tmp=$(mktemp {RELEASE_DIR}/.mw-experimental-test-eqiad.yaml.XXXXXX)\n\
         printf '%s' '{text}' >\"$tmp\"\nchmod 0644 \"$tmp\"\nmv -f \"$tmp\" {RELEASE}"
    ));
}

/// The newest-image mode (no release file): the watch service, under its own sandbox, sees
/// containerd's image event for a new image of the repository and touches the trigger file; the
/// path unit starts one sync and the tree is the new image's. An image of another repository
/// starts nothing.
#[test]
fn a_new_image_in_containerd_starts_one_sync_through_the_watch_service() {
    assert!(have("umoci"), "umoci is missing: run tests/install-deps");
    let share = tempfile::Builder::new()
        .prefix("mwx-systemd-share-")
        .tempdir()
        .unwrap();
    let s = share.path();
    let repo = format!("{REGISTRY}/{NAME}");
    // One layout per image, each archived for `ctr images import` inside.
    for (tag, dir) in [(OLD, "old"), (NEW, "new")] {
        let parent = s.join(dir);
        std::fs::create_dir_all(&parent).unwrap();
        let layout = Layout::new(&parent);
        layout.image(tag, None, |root| {
            put(root, "srv/mediawiki/index.php", "<?php // index\n");
            put(root, "srv/mediawiki/php-1.46/version.php", tag);
        });
        crate::support::sh(
            std::process::Command::new("tar")
                .arg("-C")
                .arg(&layout.dir)
                .arg("-cf")
                .arg(s.join(format!("{dir}.tar")))
                .arg("."),
        );
    }
    let m = Machine::boot(s);
    install(&m);
    m.ok(&format!(
        "mkdir -p /etc/mw-experimental\n\
         printf 'enabled: true\\nimage:\\n  source: containerd\\n  repository: {repo}\\n' \
           >/etc/mw-experimental/config.yaml\n\
         mw-experimental apply group permissions >/dev/null\n\
         systemctl start {PATH_UNIT} {WATCH}"
    ));
    let import = |archive: &str, base: &str| {
        m.ok(&format!(
            "ctr -n k8s.io images import --no-unpack --base-name {base} /mwx/share/{archive} >/dev/null"
        ));
    };
    m.wait_for(
        "the watch service running",
        Duration::from_secs(20),
        &format!("systemctl is-active --quiet {WATCH}"),
    );
    // Let it subscribe to the event stream before the first image arrives.
    std::thread::sleep(Duration::from_secs(2));

    import("old.tar", &repo);
    let runs = expect_runs(&m, 1, "a first image of the repository in containerd");
    assert_eq!(runs, ["done"], "{}", last_run_lines(&m));
    assert!(
        tree(&m).contains(&format!("./php-1.46/version.php={OLD}")),
        "the tree is not the image's:\n{}",
        tree(&m)
    );

    import("new.tar", &repo);
    let runs = expect_runs(&m, 2, "a newer image of the repository in containerd");
    assert_eq!(runs.last().unwrap(), "done", "{}", last_run_lines(&m));
    assert!(
        tree(&m).contains(&format!("./php-1.46/version.php={NEW}")),
        "the tree did not follow the newer image:\n{}",
        tree(&m)
    );

    // Another repository's image: no sync.
    import("new.tar", "docker-registry.example/restricted/other-image");
    expect_runs(&m, 2, "an image of another repository");
    assert_eq!(
        m.show(WATCH, "ActiveState"),
        "active",
        "the watch service stopped:\n{}",
        m.bash(&format!("journalctl --no-pager -u {WATCH}")).stdout
    );
    assert_eq!(m.show(WATCH, "NRestarts"), "0");
}
