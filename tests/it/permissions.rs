//! The permissions component against the real kernel, `getfacl`, and real users: the policy
//! on every entry, inheritance for files engineers create, planted links left alone, and a
//! converged tree getting zero writes. (A directory swapped for a symlink in the middle of the
//! walk is pinned by `walk::tests`, which can pause the walk at an exact directory.)

use crate::support::perm::*;
use crate::support::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn config(w: &World, owner: &str, g: &GroupGuard, members: &[&str]) -> String {
    config_for(w, owner, &g.name, g.gid, members)
}

fn config_for(w: &World, owner: &str, group: &str, gid: u32, members: &[&str]) -> String {
    format!(
        "enabled: true\ncode: {{ path: {}, owner: {owner}, mode: \"2775\" }}\n\
         deployers: {{ group: {}, gid: {}, members: [{}] }}\n",
        w.code.display(),
        group,
        gid,
        members.join(", ")
    )
}

fn write(path: &Path, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, "<?php\n").unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The effective permission of `entry` (e.g. `group:NAME:`) in a getfacl block: entry AND mask.
fn effective(lines: &[String], entry: &str) -> String {
    let perm = |prefix: &str| -> Option<String> {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..prefix.len() + 3].to_string())
    };
    let e = perm(entry).unwrap_or_else(|| panic!("no {entry} in {lines:#?}"));
    let m = perm("mask::").unwrap_or_else(|| "rwx".into());
    e.chars()
        .zip(m.chars())
        .map(|(a, b)| if a == b { a } else { '-' })
        .collect()
}

fn has(lines: &[String], want: &str, path: &Path) {
    assert!(
        lines.iter().any(|l| l == want),
        "{path:?} lacks {want:?}:\n{}",
        lines.join("\n")
    );
}

#[test]
fn apply_gives_every_entry_the_policy_and_members_can_edit_what_they_create() {
    let owner = UserGuard::create();
    let alice = UserGuard::create();
    let bob = UserGuard::create();
    let g = GroupGuard::reserve();
    let w = World::new("");
    w.write_config(&config(&w, &owner.name, &g, &[&alice.name, &bob.name]));
    let c = &w.code;
    write(&c.join("index.php"), 0o644);
    write(&c.join("php-1.44/includes/Setup.php"), 0o640);
    write(&c.join("php-1.44/maintenance/run.sh"), 0o755);
    write(&c.join("php-1.44/includes/deep/er/private.php"), 0o600);
    fs::set_permissions(
        c.join("php-1.44/includes/deep"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    sh(Command::new("chown")
        .arg(&alice.name)
        .arg(c.join("php-1.44/includes/deep/er/private.php")));

    w.run(&["apply", "group", "permissions"]).code(0);

    let tree = getfacl_tree(c);
    assert_eq!(
        tree.len(),
        10,
        "every directory and file: {:#?}",
        tree.keys()
    );
    let group_line = format!("# group: {}", g.name);
    let named = format!("group:{}:", g.name);
    for (path, lines) in &tree {
        let other = lines.iter().find(|l| l.starts_with("other::")).unwrap();
        if fs::symlink_metadata(path).unwrap().is_dir() {
            has(lines, &group_line, path);
            has(lines, "# flags: -s-", path);
            assert_eq!(effective(lines, &named), "rwx", "{path:?}");
            assert_eq!(other, "other::r-x", "{path:?}");
            for d in [
                "default:user::rwx",
                "default:group::r-x",
                "default:mask::rwx",
                "default:other::r-x",
            ] {
                has(lines, d, path);
            }
            has(lines, &format!("default:group:{}:rwx", g.name), path);
        } else {
            let exec = path.ends_with("run.sh");
            assert_eq!(
                effective(lines, &named),
                if exec { "rwx" } else { "rw-" },
                "{path:?}"
            );
            assert!(other.starts_with("other::r"), "{path:?}: {other}");
        }
    }
    has(&tree[c], &format!("# owner: {}", owner.name), c);
    let private = c.join("php-1.44/includes/deep/er/private.php");
    has(
        &tree[&private],
        &format!("# owner: {}", alice.name),
        &private,
    );
    assert_eq!(
        fs::symlink_metadata(c).unwrap().permissions().mode() & 0o7777,
        0o2775
    );

    // Engineers edit each other's files, and php-fpm (uid 33) reads them.
    bob.run(&["truncate", "-s", "7", private.to_str().unwrap()])
        .code(0);
    assert_eq!(fs::metadata(&private).unwrap().len(), 7);
    Out::of(
        Command::new("setpriv")
            .args(["--reuid=33", "--regid=33", "--clear-groups", "cat"])
            .arg(&private)
            .output()
            .unwrap(),
    )
    .code(0);

    // A plain `touch` by a member inherits group:<deployers>:rw-, and another member can write it.
    let new = c.join("php-1.44/includes/deep/er/New.php");
    alice.run(&["touch", new.to_str().unwrap()]).code(0);
    let lines: Vec<String> = getfacl(&new).lines().map(str::to_string).collect();
    assert_eq!(effective(&lines, &named), "rw-", "{}", lines.join("\n"));
    has(&lines, &group_line, &new);
    bob.run(&["truncate", "-s", "3", new.to_str().unwrap()])
        .code(0);
    let newdir = c.join("php-1.44/extensions");
    alice.run(&["mkdir", newdir.to_str().unwrap()]).code(0);
    alice
        .run(&["touch", newdir.join("x.js").to_str().unwrap()])
        .code(0);
    bob.run(&["truncate", "-s", "1", newdir.join("x.js").to_str().unwrap()])
        .code(0);

    // What members create is converged already: nothing pending.
    let plan = w.run(&["--json", "plan", "permissions"]);
    plan.code(0);
}

#[test]
fn planted_links_are_left_alone_and_reported_and_second_apply_writes_nothing() {
    let g = GroupGuard::reserve();
    let w = World::new("");
    w.write_config(&config(&w, "root", &g, &[]));
    let c = &w.code;
    let outside = w.path().join("outside");
    write(&outside.join("secret"), 0o600);
    write(&outside.join("dir/inner.php"), 0o644);
    write(&outside.join("rootfile"), 0o644);
    write(&c.join("a/b/ok.php"), 0o644);
    symlink(outside.join("secret"), c.join("a/to_file")).unwrap();
    symlink(outside.join("dir"), c.join("a/b/to_dir")).unwrap();
    fs::hard_link(outside.join("rootfile"), c.join("a/hard.php")).unwrap();

    let outside_before = snapshot(&outside);
    let acl_before = getfacl_tree(&outside);

    let out = w.run(&["--json", "apply", "group", "permissions"]);
    out.code(0);
    let p = &out.json()["components"]["permissions"];
    assert_eq!(p["observed"]["symlinks"], 2, "{p:#}");
    assert_eq!(p["observed"]["hardlinks_skipped"], 1, "{p:#}");
    let notes = p["notes"].to_string();
    assert!(notes.contains("a/hard.php"), "hard link not named: {notes}");
    assert!(notes.contains("2 symlinks left alone"), "{notes}");

    assert_same(&outside_before, &snapshot(&outside));
    assert_eq!(acl_before, getfacl_tree(&outside), "ACLs outside changed");
    let hard = getfacl(&c.join("a/hard.php"));
    assert!(
        !hard.contains(&g.name),
        "hard-linked file was changed:\n{hard}"
    );

    // Converged: a second apply writes nothing (ctime of every inode, symlinks included).
    let before = snapshot(c);
    let out = w.run(&["--json", "apply", "permissions"]);
    out.code(0);
    let counts = &out.json()["components"]["permissions"]["counts"];
    for (k, n) in counts.as_object().unwrap() {
        assert_eq!(n, 0, "second apply changed {k}: {counts}");
    }
    assert_same(&before, &snapshot(c));
    w.run(&["plan", "permissions"]).code(0);

    // Drift made by hand is found exactly and only there.
    sh(Command::new("setfacl")
        .args(["-m", &format!("g:{}:r", g.gid)])
        .arg(c.join("a/b/ok.php")));
    let plan = w.run(&["--json", "plan", "permissions"]);
    plan.code(1);
    let v = plan.json();
    let p = &v["components"]["permissions"];
    assert_eq!(p["counts"]["acl"], 1, "{p:#}");
    assert_eq!(p["changes"][0]["target"], "a/b/ok.php", "{p:#}");
}

/// What `sync` writes has the policy when it appears: new names and replaced files alike,
/// so a `plan permissions` right after finds nothing to do.
#[test]
fn files_a_sync_writes_have_the_policy_already() {
    let g = GroupGuard::reserve();
    let w = World::new("");
    let root = w.dir.path().join("image");
    let img = root.join("srv/mediawiki");
    write(&img.join("index.php"), 0o644);
    write(&img.join("php-1.44/maintenance/run.sh"), 0o755);
    write(&img.join("php-1.44/includes/deep/private.php"), 0o600);
    w.write_config(&format!(
        "{}image: {{ source: directory, location: {} }}\n",
        config(&w, "root", &g, &[]),
        root.display()
    ));
    w.run(&["apply", "group", "permissions"]).code(0);
    w.run(&["sync"]).code(0);
    // A file replaced (a temp name renamed over it) and one new name.
    fs::write(img.join("index.php"), "<?php // v2\n").unwrap();
    write(&img.join("php-1.44/includes/New.php"), 0o644);
    w.run(&["sync"]).code(0);
    assert_eq!(
        fs::read_to_string(w.code.join("index.php")).unwrap(),
        "<?php // v2\n"
    );

    let named = format!("group:{}:", g.name);
    let mut files = 0;
    for (path, lines) in getfacl_tree(&w.code) {
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            continue;
        }
        files += 1;
        let want = if path.ends_with("run.sh") {
            "rwx"
        } else {
            "rw-"
        };
        assert_eq!(effective(&lines, &named), want, "{path:?}: {lines:#?}");
        // The owner's bits are the image's (new names are made with the image's mode).
        let image_mode = fs::metadata(img.join(path.strip_prefix(&w.code).unwrap()))
            .unwrap()
            .permissions()
            .mode();
        let live_mode = fs::symlink_metadata(&path).unwrap().permissions().mode();
        assert_eq!(live_mode & 0o700, image_mode & 0o700, "{path:?}");
    }
    assert_eq!(files, 4, "the image's four files");
    w.run(&["plan", "permissions"]).code(0);
}

#[test]
fn switch_off_leaves_the_tree_untouched() {
    let g = GroupGuard::reserve();
    let w = World::new("");
    w.write_config(&config(&w, "root", &g, &[]).replace("enabled: true", "enabled: false"));
    write(&w.code.join("a/x.php"), 0o600);
    let before = snapshot(&w.code);
    w.run(&["plan", "permissions"]).code(0);
    w.run(&["apply", "group", "permissions"]).code(0);
    assert_same(&before, &snapshot(&w.code));
    assert!(!getfacl(&w.code.join("a/x.php")).contains("mask::"));
}

#[test]
fn missing_tree_is_pending_then_created_with_the_policy() {
    let g = GroupGuard::create();
    let w = World::new("");
    w.write_config(&config(&w, "nobody", &g, &[]));
    let plan = w.run(&["--json", "plan", "permissions"]);
    plan.code(1);
    assert_eq!(
        plan.json()["components"]["permissions"]["counts"]["create"],
        1
    );
    assert!(!w.code.exists(), "plan created the tree");
    w.run(&["apply", "permissions"]).code(0);
    let acl = getfacl(&w.code);
    for want in ["# owner: nobody", "# flags: -s-", "mask::rwx"] {
        assert!(acl.contains(want), "{want}:\n{acl}");
    }
    assert!(
        acl.contains(&format!("default:group:{}:rwx", g.name)),
        "{acl}"
    );
    w.run(&["plan", "permissions"]).code(0);
}

#[test]
fn missing_owner_is_an_error_naming_it_and_nothing_changes() {
    let g = GroupGuard::reserve();
    let w = World::new("");
    let ghost = unique("mwxnouser");
    w.write_config(&config(&w, &ghost, &g, &[]));
    write(&w.code.join("x.php"), 0o644);
    let before = snapshot(&w.code);
    w.run(&["apply", "permissions"])
        .code(2)
        .stderr_has("code.owner")
        .stderr_has(&ghost);
    assert_same(&before, &snapshot(&w.code));
}

#[test]
fn code_path_that_is_a_symlink_is_refused() {
    let g = GroupGuard::reserve();
    let w = World::new("");
    w.write_config(&config(&w, "root", &g, &[]));
    let elsewhere = w.path().join("elsewhere");
    write(&elsewhere.join("x.php"), 0o644);
    fs::create_dir_all(w.code.parent().unwrap()).unwrap();
    symlink(&elsewhere, &w.code).unwrap();
    let before = snapshot(&elsewhere);
    w.run(&["apply", "permissions"])
        .code(2)
        .stderr_has("symlink");
    assert_same(&before, &snapshot(&elsewhere));
}

#[test]
fn gid_held_by_another_group_is_never_granted_the_tree() {
    let other = GroupGuard::create();
    let w = World::new("");
    let wanted = GroupGuard::reserve();
    w.write_config(&config_for(&w, "root", &wanted.name, other.gid, &[]));
    write(&w.code.join("x.php"), 0o644);
    let before = snapshot(&w.code);
    w.run(&["apply", "group", "permissions"])
        .code(2)
        .stderr_has(&other.name)
        .stderr_has("refusing to grant");
    assert_same(&before, &snapshot(&w.code));
}
