//! Who last changed each edit, and when: two real deployers (temporary users in the deployer
//! group, run through `setpriv`) edit the tree as engineers do (`sed -i`, which writes a new file
//! and renames it over; a shell redirection, which creates a file or writes one in place; `rm`),
//! and `diff`, `diff --mine`, `status`, the banner and the fact name the editor the file system
//! can tell (the owner of a replaced or created file; "unknown" for a file written in place that
//! keeps the owner the sync gave it, and for a deletion) and the time (the entry's mtime).

use crate::hold::{put, Node};
use crate::support::*;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;

/// Runs `mw-experimental ARGS` as root with no sudo in the environment (as pam_motd, cron or a
/// root shell do), or, with `sudo_uid`, as `sudo` leaves it for the engineer who ran it.
fn as_root(n: &Node, sudo_uid: Option<u32>, args: &[&str]) -> Out {
    let mut cmd = n.w.cmd();
    cmd.args(args)
        .env_remove("SUDO_UID")
        .env_remove("SUDO_USER");
    if let Some(u) = sudo_uid {
        cmd.env("SUDO_UID", u.to_string());
    }
    Out::of(cmd.output().unwrap())
}

/// Runs a program as member `i` of the node (no shell unless the program is one).
fn member_does(n: &Node, i: usize, argv: &[&str]) {
    let o = n.members[i].run(argv);
    o.code(0);
}

/// The edit of `path` in a `diff --json`.
fn edit_of<'a>(d: &'a Value, path: &str) -> &'a Value {
    d["edits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("no edit of {path} in {d:#}"))
}

fn mtime(p: &std::path::Path) -> i64 {
    std::fs::symlink_metadata(p).unwrap().mtime()
}

#[test]
fn diff_status_the_banner_and_the_fact_name_who_changed_each_edit_and_when() {
    let n = Node::new(2, "2026-11-20-101010-publish-1");
    put(&n.img, "srv/mediawiki/gone.php", "<?php // to delete\n");
    n.w.run(&["sync"]).code(0);
    n.w.run(&["apply", "permissions"]).code(0);
    let (alice, bob) = (&n.members[0], &n.members[1]);
    let code = n.w.code.display().to_string();
    let at = |rel: &str| format!("{code}/{rel}");

    // alice: an edit by write-and-rename (sed -i) and a new file.
    member_does(&n, 0, &["sed", "-i", "s/v1/alice/", &at("index.php")]);
    member_does(
        &n,
        0,
        &[
            "sh",
            "-c",
            "printf '<?php // new\\n' > \"$1\"",
            "sh",
            &at("php-1.44/Alice.php"),
        ],
    );
    // bob: a write in place (the inode and its owner, root, stay) and a deletion.
    member_does(
        &n,
        1,
        &[
            "sh",
            "-c",
            "printf '<?php // bob\\n' > \"$1\"",
            "sh",
            &at("php-1.44/Setup.php"),
        ],
    );
    member_does(&n, 1, &["rm", &at("gone.php")]);
    let owner = |rel: &str| std::fs::symlink_metadata(n.w.code.join(rel)).unwrap().uid();
    assert_eq!(
        owner("index.php"),
        alice.uid,
        "sed -i left a file of alice's"
    );
    assert_eq!(
        owner("php-1.44/Setup.php"),
        0,
        "the in-place write kept root as owner"
    );

    // diff --json: editor and time per edit.
    let d = as_root(&n, None, &["--json", "diff"]);
    d.code(1);
    let d = d.json();
    for (path, change, who) in [
        ("index.php", "modified", Some(alice)),
        ("php-1.44/Alice.php", "added", Some(alice)),
        ("php-1.44/Setup.php", "modified", None),
        ("gone.php", "deleted", None),
    ] {
        let e = edit_of(&d, path);
        assert_eq!(e["change"], change, "{e}");
        match who {
            Some(u) => {
                assert_eq!(e["user"], u.name.as_str(), "{e}");
                assert_eq!(e["uid"], u.uid, "{e}");
            }
            None => assert!(e["user"].is_null() && e["uid"].is_null(), "{e}"),
        }
        let want = if change == "deleted" {
            mtime(&n.w.code)
        } else {
            mtime(&n.w.code.join(path))
        };
        assert_eq!(e["changed_unix"], want, "{e}");
        assert!(
            e["changed_at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{e}"
        );
    }
    assert_eq!(d["edits"].as_array().unwrap().len(), 4, "{d:#}");

    // The text: the editor beside each path, the count per editor on the second line.
    let t = as_root(&n, None, &["diff"]);
    t.code(1);
    let lines: Vec<&str> = t.stdout.lines().collect();
    assert_eq!(
        lines[0], "diff: 2 modified, 1 added, 1 deleted against the image last synced",
        "{}",
        t.stdout
    );
    assert_eq!(
        lines[1],
        format!("editors: {} 2, unknown 2", alice.name),
        "{}",
        t.stdout
    );
    let line = |prefix: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?}:\n{}", t.stdout))
    };
    assert!(line("M index.php").contains(&alice.name), "{}", t.stdout);
    assert!(
        line("A php-1.44/Alice.php").contains(&alice.name),
        "{}",
        t.stdout
    );
    assert!(
        line("M php-1.44/Setup.php").contains("unknown"),
        "{}",
        t.stdout
    );
    let gone = line("D gone.php");
    assert!(
        gone.contains("unknown") && gone.contains(" by 20"),
        "{}",
        t.stdout
    );

    // --mine, as alice herself, through sudo, and as bob (whose edits are not his to the file
    // system: nothing); root itself sees every edit, and is told so.
    let mine = n.as_member(0, &["diff", "--mine"]);
    mine.code(1);
    let first = mine.stdout.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "diff: 1 modified, 1 added, 0 deleted by {} against the image last synced (2 more by others or unknown: `diff` without --mine lists them)",
            alice.name
        ),
        "{}",
        mine.stdout
    );
    assert!(!mine.stdout.contains("Setup.php") && !mine.stdout.contains("gone.php"));
    let sudo = as_root(&n, Some(alice.uid), &["--json", "diff", "--mine"]);
    sudo.code(1);
    let sj = sudo.json();
    assert_eq!(sj["modified"], serde_json::json!(["index.php"]), "{sj}");
    assert_eq!(
        sj["added"],
        serde_json::json!(["php-1.44/Alice.php"]),
        "{sj}"
    );
    assert_eq!(sj["deleted"], serde_json::json!([]), "{sj}");
    assert_eq!(sj["mine"]["user"], alice.name.as_str(), "{sj}");
    n.as_member(1, &["diff", "--mine"]).code(0);
    as_root(&n, None, &["diff", "--mine"])
        .code(1)
        .stderr_has("listing every edit");

    // The census a sync takes when the last one is 50 minutes old (so the scan is not paid on
    // every event of a deploy) or when it kept an edit: not by a sync just after the first, of
    // the same image or of a new one that keeps no edit, but by the next sync once it has aged.
    let total = |n: &Node| {
        as_root(n, None, &["facts"]).json()["mw_experimental"]["code"]["edits"]["total"].clone()
    };
    n.w.run(&["sync"]).code(0);
    assert_eq!(
        total(&n),
        0,
        "an unchanged sync just after the first recounted"
    );
    put(
        &n.img,
        "srv/mediawiki/docs/RELEASE-NOTES.txt",
        "a new image\n",
    );
    let o = n.w.run(&["sync"]);
    o.code(0);
    assert!(
        format!("{}{}", o.stdout, o.stderr).contains(" written"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    assert_eq!(
        total(&n),
        0,
        "a new image's sync just after the first recounted"
    );
    // Aged past 50 minutes but not twice that: a new image's sync leaves the census to the
    // next unchanged one (the deploy's own sync does not pay the scan).
    let last = n.w.state_dir.join("sync/last.json");
    let age = |minutes: u64| {
        let mut l: Value = serde_json::from_str(&std::fs::read_to_string(&last).unwrap()).unwrap();
        let at = std::time::SystemTime::now() - std::time::Duration::from_secs(minutes * 60);
        l["edits"]["counted_at"] = humantime::format_rfc3339_seconds(at).to_string().into();
        std::fs::write(&last, l.to_string()).unwrap();
    };
    age(60);
    put(
        &n.img,
        "srv/mediawiki/docs/RELEASE-NOTES.txt",
        "a newer image\n",
    );
    n.w.run(&["sync"]).code(0);
    assert_eq!(
        total(&n),
        0,
        "a new image's sync recounted a census only 60 minutes old"
    );
    // Twice the age: no unchanged sync took it, so a new image's sync does.
    age(101);
    put(
        &n.img,
        "srv/mediawiki/docs/RELEASE-NOTES.txt",
        "the newest image\n",
    );
    n.w.run(&["sync"]).code(0);
    assert_eq!(
        total(&n),
        4,
        "a new image's sync left a census 101 minutes old"
    );
    age(60);
    n.w.run(&["sync"]).code(0);
    let fact = as_root(&n, None, &["facts"]).json();
    let edits = &fact["mw_experimental"]["code"]["edits"];
    assert_eq!(edits["total"], 4, "{edits:#}");
    assert_eq!(
        edits["by_editor"][0]["user"],
        alice.name.as_str(),
        "{edits:#}"
    );
    assert_eq!(edits["by_editor"][0]["uid"], alice.uid, "{edits:#}");
    assert_eq!(edits["by_editor"][0]["edits"], 2, "{edits:#}");
    assert!(edits["by_editor"][1]["uid"].is_null(), "{edits:#}");
    assert_eq!(edits["by_editor"][1]["edits"], 2, "{edits:#}");
    let recent = edits["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 4, "{edits:#}");
    let alice_php = recent
        .iter()
        .find(|e| e["path"] == "php-1.44/Alice.php")
        .unwrap();
    assert_eq!(alice_php["user"], alice.name.as_str());
    assert_eq!(
        alice_php["changed_unix"],
        mtime(&n.w.code.join("php-1.44/Alice.php"))
    );

    // status: per editor, and the caller's own.
    let st = n.as_member(0, &["status"]);
    st.code(0);
    assert!(
        st.stdout.lines().next().unwrap().contains("4 local edits"),
        "{}",
        st.stdout
    );
    let edits_line = st
        .stdout
        .lines()
        .find(|l| l.starts_with("edits:"))
        .unwrap_or_else(|| panic!("{}", st.stdout));
    assert!(
        edits_line.contains(&format!("by editor: {} 2, unknown 2", alice.name))
            && edits_line.contains("yours: 2"),
        "{}",
        st.stdout
    );
    let st_bob = n.as_member(1, &["status"]);
    assert!(st_bob.stdout.contains("yours: 0"), "{}", st_bob.stdout);

    // The banner: alice is greeted first with her edits and her hold; root (pam_motd) is not
    // greeted; both count edits per engineer.
    n.as_member(0, &["hold", "--reason", "trying T1"]).code(0);
    let banner = n.as_member(0, &["motd"]);
    banner.code(0);
    let lines: Vec<&str> = banner.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "Hello {}: 2 of the 4 edits here are yours",
            alice.name
        )),
        "{}",
        banner.stdout
    );
    assert!(
        lines[1].starts_with("  Your hold:") && lines[1].contains("trying T1"),
        "{}",
        banner.stdout
    );
    let root_banner = as_root(&n, None, &["motd"]);
    root_banner.code(0);
    assert!(
        root_banner
            .stdout
            .starts_with("This is an mw-experimental node"),
        "{}",
        root_banner.stdout
    );
    for text in [&banner.stdout, &root_banner.stdout] {
        assert!(
            text.contains(&format!("4 edits: {} 2, unknown 2", alice.name)),
            "{text}"
        );
    }
    let bob_banner = n.as_member(1, &["motd"]);
    assert!(
        bob_banner.stdout.starts_with(&format!(
            "Hello {}: none of the 4 edits here is yours",
            bob.name
        )),
        "{}",
        bob_banner.stdout
    );
    n.as_member(0, &["release"]).code(0);

    // reset counts again: alice's edit put back, her file removed, bob's left.
    as_root(&n, None, &["reset", "index.php", "php-1.44/Alice.php"]).code(0);
    let fact = as_root(&n, None, &["facts"]).json();
    let edits = &fact["mw_experimental"]["code"]["edits"];
    assert_eq!(edits["total"], 2, "{edits:#}");
    assert_eq!(edits["by_editor"].as_array().unwrap().len(), 1, "{edits:#}");
}
