//! Holds, run by real deployer members (not root) through `setpriv`: a hold pauses `sync` until
//! the last one is released or expires, shows in the fact, the metrics and the banner, and the
//! spool withstands what a member can plant in it (symlinks, a FIFO, a huge file, a hold for
//! someone else, garbage), as `strace` of root's reader proves.

use crate::support::perm::*;
use crate::support::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A node with a deployer group of `n` members, a directory image (one file) and a first sync
/// done; the world is traversable by the members, as /var/lib and /etc are on a node.
pub struct Node {
    pub w: World,
    pub g: GroupGuard,
    pub members: Vec<UserGuard>,
    pub img: PathBuf,
}

impl Node {
    pub fn new(n: usize, image_name: &str) -> Node {
        let w = World::new("");
        std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let g = GroupGuard::create();
        let members: Vec<UserGuard> = (0..n).map(|_| UserGuard::create()).collect();
        let img = w.path().join(image_name);
        put(&img, "srv/mediawiki/index.php", "v1\n");
        put(&img, "srv/mediawiki/php-1.44/Setup.php", "<?php // v1\n");
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        w.write_config(&format!(
            "enabled: true\ncode: {{ path: {}, owner: root }}\ndeployers: {{ group: {}, gid: {}, members: [{}] }}\nimage: {{ source: directory, location: {} }}\n",
            w.code.display(),
            g.name,
            g.gid,
            names.join(", "),
            img.display()
        ));
        w.run(&["apply", "group"]).code(0);
        w.run(&["sync"]).code(0);
        Node { w, g, members, img }
    }

    /// Runs the binary as member `i` (no root, the groups from the group database).
    pub fn as_member(&self, i: usize, args: &[&str]) -> Out {
        let mut argv = vec![bin().to_str().unwrap().to_string()];
        argv.push("--config".into());
        argv.push(self.w.config.to_str().unwrap().into());
        argv.extend(args.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.members[i].run(&argv)
    }

    pub fn spool(&self) -> PathBuf {
        self.w.state_dir.join("holds")
    }

    fn fact(&self) -> serde_json::Value {
        let o = self.w.run(&["facts"]);
        o.code(0);
        o.json()["mw_experimental"].clone()
    }

    fn metric_held(&self) -> String {
        std::fs::read_to_string(&self.w.metrics)
            .unwrap()
            .lines()
            .find(|l| l.starts_with("mw_experimental_sync_held "))
            .unwrap_or("no mw_experimental_sync_held sample")
            .to_string()
    }

    pub fn new_image(&self, version: &str) {
        put(
            &self.img,
            "srv/mediawiki/index.php",
            &format!("{version}\n"),
        );
    }

    fn live_index(&self) -> String {
        std::fs::read_to_string(self.w.code.join("index.php")).unwrap()
    }
}

pub fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

#[test]
fn a_member_holds_without_root_and_sync_waits_for_the_last_release() {
    let n = Node::new(2, "image");
    let (alice, bob) = (&n.members[0], &n.members[1]);
    let spool_mode = std::fs::metadata(n.spool()).unwrap().permissions().mode();
    assert_eq!(spool_mode & 0o7777, 0o3770, "the spool: {spool_mode:o}");

    let h = n.as_member(
        0,
        &["hold", "--reason", "testing Special:Version", "--for", "2h"],
    );
    h.code(0);
    assert!(h.stdout.contains("held by"), "{}", h.stdout);
    let file = n.spool().join(format!("{}.json", alice.uid));
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&file).unwrap()),
        alice.uid,
        "the hold is the member's own file"
    );

    // A newer image: the timer's sync writes nothing, exits 0 and says who and why.
    n.new_image("v2");
    let state = || std::fs::read_to_string(n.w.state_dir.join("state.json")).unwrap();
    let state_before = state();
    for args in [&["sync"][..], &["sync", "--force"], &["apply", "code"]] {
        if args[0] == "apply" {
            assert_eq!(
                state(),
                state_before,
                "a held sync leaves the state file alone"
            );
        }
        let s = n.w.run(args);
        s.code(0);
        let all = format!("{}{}", s.stdout, s.stderr);
        assert!(
            all.contains(&format!("held by {}", alice.name))
                && all.contains("testing Special:Version"),
            "{args:?}:\n{all}"
        );
        assert_eq!(n.live_index(), "v1\n", "{args:?} wrote the tree");
    }
    // Puppet's components are not held.
    let a = n.w.run(&["apply", "group", "permissions"]);
    a.code(0);
    assert!(a.stdout.starts_with("apply: "), "{}", a.stdout);
    // status, as the member: the summary first, the hold, and the newer image waiting.
    let st = n.as_member(0, &["status"]);
    st.code(0);
    let first = st.stdout.lines().next().unwrap_or("");
    assert!(
        first.starts_with("status: switch on") && first.contains("held (1 hold)"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout
            .contains(&format!("holds:       held by {}", alice.name))
            && st.stdout.contains("newer image: ")
            && st.stdout.contains("once released"),
        "{}",
        st.stdout
    );
    let holds = n.fact()["holds"].clone();
    assert_eq!(holds[0]["user"], alice.name.as_str(), "{holds:#}");
    assert_eq!(holds[0]["reason"], "testing Special:Version");
    assert!(holds[0]["since"].is_string() && holds[0]["until"].is_string());
    assert_eq!(n.metric_held(), "mw_experimental_sync_held 1");

    // Two hold; one releases: still held.
    n.as_member(1, &["hold", "--reason", "bisecting"]).code(0);
    n.as_member(0, &["release"]).code(0);
    let s = n.w.run(&["sync"]);
    s.code(0);
    assert!(
        s.stdout.contains(&format!("held by {}", bob.name)),
        "{}",
        s.stdout
    );
    assert_eq!(n.live_index(), "v1\n");
    // A member cannot release another's hold: the sticky spool refuses the unlink.
    let rm = alice.run(&[
        "rm",
        "-f",
        n.spool()
            .join(format!("{}.json", bob.uid))
            .to_str()
            .unwrap(),
    ]);
    assert_ne!(rm.code, 0, "a member removed another member's hold");

    // The last release: sync proceeds, and the metric says so.
    n.as_member(1, &["release"]).code(0);
    n.w.run(&["sync"]).code(0);
    assert_eq!(n.live_index(), "v2\n");
    assert_eq!(n.metric_held(), "mw_experimental_sync_held 0");
    assert_eq!(n.fact()["holds"], serde_json::json!([]));

    // An expired hold is ignored.
    n.as_member(0, &["hold", "--for", "1s"]).code(0);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    n.new_image("v3");
    n.w.run(&["sync"]).code(0);
    assert_eq!(n.live_index(), "v3\n");

    // Limits are checked before anything is written; release --all is root's.
    n.as_member(0, &["hold", "--for", "8d"])
        .code(2)
        .stderr_has("7 days");
    n.as_member(0, &["hold", "--reason", "a\x1b[2Jb"])
        .code(2)
        .stderr_has("control character");
    n.as_member(1, &["hold"]).code(0);
    n.as_member(0, &["release", "--all"])
        .code(2)
        .stderr_has("root");
    let r = n.w.run(&["release", "--all"]);
    r.code(0);
    assert!(r.stdout.contains(&bob.name), "{}", r.stdout);
    assert_eq!(std::fs::read_dir(n.spool()).unwrap().count(), 0);
    drop(n.g);
}

/// Bytes read per spool entry by the traced process, from `strace -e openat,read,close`.
fn reads_per_entry(log: &str) -> BTreeMap<String, u64> {
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for line in log.lines() {
        let line = line.split_once(' ').map(|(_, l)| l).unwrap_or(line).trim();
        let ret = line.rsplit_once(" = ").map(|(_, r)| r.trim());
        if let Some(rest) = line.strip_prefix("openat(") {
            if let (Some(name), Some(fd)) = (rest.split('"').nth(1), ret) {
                if let Ok(fd) = fd.parse::<i64>() {
                    open.insert(fd.to_string(), name.to_string());
                    total.entry(name.to_string()).or_default();
                }
            }
        } else if let Some(rest) = line.strip_prefix("read(") {
            let fd = rest.split(',').next().unwrap_or("");
            if let (Some(name), Some(Ok(n))) = (open.get(fd), ret.map(|r| r.parse::<u64>())) {
                *total.entry(name.clone()).or_default() += n;
            }
        } else if let Some(rest) = line.strip_prefix("close(") {
            open.remove(rest.split(')').next().unwrap_or(""));
        }
    }
    total
}

/// `facts` as root under `strace`: its output and the trace.
fn traced_facts(n: &Node) -> (Out, String) {
    let log = n.w.path().join("strace.log");
    let out = Out::of(
        Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=openat,read,close", "-o"])
            .arg(&log)
            .arg(bin())
            .arg("--config")
            .arg(&n.w.config)
            .arg("facts")
            .output()
            .unwrap(),
    );
    out.code(0);
    (out, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn attacks_on_the_spool_are_reported_and_ignored_and_nothing_is_read_past_the_limit() {
    assert!(have("strace"), "strace is missing: run tests/install-deps");
    let n = Node::new(2, "image");
    let (mallory, victim) = (&n.members[0], &n.members[1]);
    let own = n.spool().join(format!("{}.json", mallory.uid));
    let own_s = own.to_str().unwrap().to_string();
    // A FIFO outside the spool: whoever opens it for reading without O_NONBLOCK hangs.
    let fifo = n.w.path().join("fifo");
    sh(Command::new("mkfifo").arg(&fifo));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claim = format!(
        r#"{{"user":"{}","reason":"not mine","since":{now},"until":{}}}"#,
        victim.name,
        now + 3600
    );
    let shadow_before = std::fs::metadata("/etc/shadow").unwrap();
    let attacks: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "symlink to /etc/shadow",
            vec![
                "ln".into(),
                "-s".into(),
                "/etc/shadow".into(),
                own_s.clone(),
            ],
            "symlink",
        ),
        (
            "symlink to a FIFO",
            vec![
                "ln".into(),
                "-s".into(),
                fifo.to_str().unwrap().into(),
                own_s.clone(),
            ],
            "symlink",
        ),
        (
            "a FIFO",
            vec!["mkfifo".into(), own_s.clone()],
            "not a regular file",
        ),
        (
            "a 100 MB file",
            vec!["truncate".into(), "-s".into(), "100M".into(), own_s.clone()],
            "over the 4096-byte limit",
        ),
        (
            "a hold claiming another user",
            vec![
                "sh".into(),
                "-c".into(),
                format!("printf '%s' '{claim}' > {own_s}"),
            ],
            "is owned by",
        ),
        (
            "a hold named for another uid",
            vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "printf '%s' '{claim}' > {}",
                    n.spool().join(format!("{}.json", victim.uid)).display()
                ),
            ],
            "named for uid",
        ),
        (
            "garbage JSON",
            vec![
                "sh".into(),
                "-c".into(),
                format!("printf '{{not json' > {own_s}"),
            ],
            "not a valid hold",
        ),
    ];
    // The tracer sees the reader at work: a valid hold is read, within the limit.
    n.as_member(1, &["hold"]).code(0);
    let (traced, log) = traced_facts(&n);
    assert_eq!(
        traced.json()["mw_experimental"]["holds"][0]["user"],
        victim.name.as_str()
    );
    let read = reads_per_entry(&log)[&format!("{}.json", victim.uid)];
    assert!(
        read > 0 && read <= 4096,
        "read {read} bytes of a valid hold:\n{log}"
    );
    n.as_member(1, &["release"]).code(0);
    for (round, (what, argv, why)) in attacks.iter().enumerate() {
        n.new_image(&format!("round {round}"));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        mallory.run(&argv).code(0);
        let spool_before = snapshot(&n.spool());
        // Root's reader, traced: nothing is read past the limit, nothing outside is opened.
        let (traced, log) = traced_facts(&n);
        let fact = traced.json()["mw_experimental"].clone();
        assert_eq!(fact["holds"], serde_json::json!([]), "{what}: {fact:#}");
        let ignored = fact["holds_ignored"].to_string();
        assert!(
            ignored.contains(why),
            "{what}: expected {why:?} in {ignored}"
        );
        assert!(
            !log.contains("/etc/shadow"),
            "{what}: root opened /etc/shadow:\n{log}"
        );
        if *why == "symlink" {
            // The kernel refused to follow it: the open of the entry itself failed with ELOOP.
            let name = format!("\"{}.json\"", mallory.uid);
            assert!(
                log.lines().any(|l| l.contains("openat(")
                    && l.contains(&name)
                    && l.contains("= -1 ELOOP")),
                "{what}: no refused open of {name}:\n{log}"
            );
        }
        assert!(
            !log.contains(fifo.to_str().unwrap()),
            "{what}: root opened the FIFO:\n{log}"
        );
        for (name, bytes) in reads_per_entry(&log) {
            if name.ends_with(".json") {
                assert!(bytes <= 4096, "{what}: read {bytes} bytes of {name}");
            }
        }
        // The timer's sync: not held, reports the entry, writes nothing in the spool.
        let s = n.w.run(&["sync"]);
        s.code(0).stderr_has(why);
        assert!(!s.stdout.contains("held by"), "{what}: {}", s.stdout);
        assert_same(&spool_before, &snapshot(&n.spool()));
        assert_eq!(
            n.live_index(),
            format!("round {round}\n"),
            "{what}: the sync was held"
        );
        // Next round: root clears the spool (a member cannot remove a file named for another).
        n.w.run(&["release", "--all"]).code(0);
    }
    // Owner and mode: what root following the planted link would change. Not its ctime or
    // content: other tests of this binary add users (and so rewrite /etc/shadow) in parallel;
    // that root never opened it is checked on its trace above.
    let shadow_after = std::fs::metadata("/etc/shadow").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (
            shadow_before.mode(),
            shadow_before.uid(),
            shadow_before.gid()
        ),
        (shadow_after.mode(), shadow_after.uid(), shadow_after.gid()),
        "/etc/shadow changed owner or mode"
    );
}
