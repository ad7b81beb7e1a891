//! What people see: a first sync of a 5,000-entry tree says what happened in a few lines (paths
//! with `-v`), a sync under a pseudo-terminal shows progress on stderr, and without a terminal
//! the output has no control characters at all.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A MediaWiki-shaped image of `entries` entries (bench/gen-tree) in `w`.
fn image(w: &World, entries: u32) -> PathBuf {
    let img = w.path().join("image");
    sh(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen-tree"))
            .arg(img.join("srv/mediawiki"))
            .args(["--entries", &entries.to_string()]),
    );
    img
}

fn world_syncing(img: &Path) -> World {
    let w = World::new("");
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: directory, location: {} }}\n",
        img.display()
    ));
    w
}

fn control_chars(s: &str) -> Vec<char> {
    s.chars().filter(|c| c.is_control() && *c != '\n').collect()
}

#[test]
fn a_first_sync_of_5000_entries_is_a_short_report_and_v_lists_paths() {
    let base = World::new("");
    let img = image(&base, 5000);

    let w = world_syncing(&img);
    let out = Out::of(
        w.cmd()
            .arg("sync")
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .output()
            .unwrap(),
    );
    out.code(0);
    let lines = out.stdout.lines().count() + out.stderr.lines().count();
    assert!(
        lines <= 15,
        "{lines} lines:\n--- stdout\n{}--- stderr\n{}",
        out.stdout,
        out.stderr
    );
    let first = out.stdout.lines().next().unwrap_or("");
    assert!(
        first.starts_with("sync: code: ") && first.contains(" written"),
        "the summary line: {first}"
    );
    assert_eq!(
        control_chars(&out.stdout),
        Vec::<char>::new(),
        "{}",
        out.stdout
    );
    assert_eq!(
        control_chars(&out.stderr),
        Vec::<char>::new(),
        "{}",
        out.stderr
    );

    // -v: the written paths, grouped.
    let w = world_syncing(&img);
    let out = w.run(&["-v", "sync"]);
    out.code(0);
    assert!(out.stdout.contains("  code mkdir ("), "{}", out.stdout);
    let listed = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("    ") && !l.trim().is_empty())
        .count();
    assert!(listed >= 10, "-v listed {listed} paths:\n{}", out.stdout);
}

#[test]
fn sync_on_a_terminal_shows_progress_on_stderr() {
    assert!(
        have("script"),
        "script (bsdutils) is missing: run tests/install-deps"
    );
    let base = World::new("");
    let img = image(&base, 1000);
    let w = world_syncing(&img);
    // `script` gives the command a pseudo-terminal; its transcript is what the terminal showed.
    let line = format!("{} --config {} sync", bin().display(), w.config.display());
    let out = on_terminal(&line, Some(("TERM", "xterm")));
    out.code(0);
    assert!(
        out.stdout.contains("scanned") && out.stdout.contains("written,"),
        "no progress on the terminal:\n{}",
        out.stdout
    );
    // -q, or under systemd: no progress line.
    for (args, env) in [(" -q", None), ("", Some(("INVOCATION_ID", "0123")))] {
        let w = world_syncing(&img);
        let line = format!(
            "{} --config {}{args} sync",
            bin().display(),
            w.config.display()
        );
        let out = on_terminal(&line, env);
        out.code(0);
        assert!(
            !out.stdout.contains("scanned"),
            "{args} {env:?}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn diff_stat_counts_changed_lines_per_file() {
    let w = World::new("");
    let img = w.path().join("image");
    let put = |rel: &str, text: &str| {
        let p = img.join("srv/mediawiki").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("index.php", "<?php\n// one\n// two\n");
    put("gone.php", "a\nb\nc\nd\n");
    put("same.php", "x\n");
    w.write_config(&format!(
        "enabled: true\nimage: {{ source: directory, location: {} }}\n",
        img.display()
    ));
    w.run(&["sync"]).code(0);
    std::fs::write(
        w.code.join("index.php"),
        "<?php\n// ONE\n// two\n// three\n",
    )
    .unwrap();
    std::fs::remove_file(w.code.join("gone.php")).unwrap();
    std::fs::write(w.code.join("new.php"), "1\n2\n").unwrap();

    let out = w.run(&["diff", "--stat"]);
    out.code(1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "diff: 1 modified, 1 added, 1 deleted against the image last synced",
            " gone.php  |     4 ----",
            " index.php |     3 ++-",
            " new.php   |     2 ++",
            " 3 files changed, 4 insertions(+), 5 deletions(-)",
        ],
        "{}",
        out.stdout
    );
    let j = w.run(&["--json", "diff", "--stat"]).json();
    assert_eq!(j["stat"]["index.php"]["insertions"], 2, "{j}");
    assert_eq!(j["stat"]["index.php"]["deletions"], 1, "{j}");
}

#[test]
fn apply_permissions_on_a_terminal_shows_progress() {
    let g = crate::support::perm::GroupGuard::create();
    let base = World::new("");
    let img = image(&base, 1000);
    let w = World::new("");
    w.write_config(&format!(
        "enabled: true\ncode: {{ path: {}, owner: root }}\ndeployers: {{ group: {}, gid: {} }}\nimage: {{ source: directory, location: {} }}\n",
        w.code.display(),
        g.name,
        g.gid,
        img.display()
    ));
    w.run(&["sync"]).code(0);
    let line = format!(
        "{} --config {} apply permissions",
        bin().display(),
        w.config.display()
    );
    let out = on_terminal(&line, Some(("TERM", "xterm")));
    out.code(0);
    assert!(
        out.stdout.contains("apply permissions: ") && out.stdout.contains("scanned"),
        "no progress on the terminal:\n{}",
        out.stdout
    );
}

/// Runs the shell command line `line` on a pseudo-terminal (`script`), outside systemd, with
/// one extra environment variable; its transcript is what the terminal showed.
fn on_terminal(line: &str, env: Option<(&str, &str)>) -> Out {
    let mut cmd = Command::new("script");
    cmd.args(["-qec", line, "/dev/null"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID");
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    Out::of(cmd.output().unwrap())
}
