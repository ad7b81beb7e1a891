//! What people see: a first sync of a 5,000-entry tree says what happened in a few lines (paths
//! with `-v`), a sync under a pseudo-terminal shows progress on stderr, and without a terminal
//! the output has no control characters at all. The binary (and `script`, for the terminal)
//! run under `assert_cmd`.

use crate::support::*;
use assert_cmd::assert::Assert;
use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;
use std::path::{Path, PathBuf};

/// A MediaWiki-shaped image of `entries` entries (bench/gen-tree) in `w`.
fn image(w: &World, entries: u32) -> PathBuf {
    let img = w.path().join("image");
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen-tree"))
        .arg(img.join("srv/mediawiki"))
        .args(["--entries", &entries.to_string()])
        .assert()
        .success();
    img
}

/// `mw-experimental --config <world's config>`, under assert_cmd.
fn mwx(w: &World) -> Command {
    Command::from_std(w.cmd())
}

/// A finished run's stdout and stderr, as text.
fn texts(a: &Assert) -> (String, String) {
    let o = a.get_output();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
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
    let run = mwx(&w)
        .arg("sync")
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("sync: code: "));
    let (stdout, stderr) = texts(&run);
    let lines = stdout.lines().count() + stderr.lines().count();
    assert!(
        lines <= 15,
        "{lines} lines:\n--- stdout\n{stdout}--- stderr\n{stderr}"
    );
    let first = stdout.lines().next().unwrap_or("");
    assert!(first.contains(" written"), "the summary line: {first}");
    assert_eq!(control_chars(&stdout), Vec::<char>::new(), "{stdout}");
    assert_eq!(control_chars(&stderr), Vec::<char>::new(), "{stderr}");

    // -v: the written paths, grouped.
    let w = world_syncing(&img);
    let run = mwx(&w)
        .args(["-v", "sync"])
        .assert()
        .success()
        .stdout(contains("  code mkdir ("));
    let (stdout, stderr) = texts(&run);
    let listed = stdout
        .lines()
        .filter(|l| l.starts_with("    ") && !l.trim().is_empty())
        .count();
    assert!(listed >= 10, "-v listed {listed} paths:\n{stdout}");
    // -v's timings are all on the sync's one clock: each "by N s" is at or after the last.
    let by: Vec<f64> = stderr
        .lines()
        .filter_map(|l| l.split(" by ").nth(1)?.split('s').next()?.parse().ok())
        .collect();
    assert!(by.len() >= 5, "-v's timed lines:\n{stderr}");
    assert!(
        by.windows(2).all(|w| w[0] <= w[1]),
        "-v's times go back:\n{stderr}"
    );
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
    on_terminal(&line, Some(("TERM", "xterm")))
        .success()
        .stdout(contains("scanned").and(contains("written,")));
    // -q, or under systemd: no progress line.
    for (args, env) in [(" -q", None), ("", Some(("INVOCATION_ID", "0123")))] {
        let w = world_syncing(&img);
        let line = format!(
            "{} --config {}{args} sync",
            bin().display(),
            w.config.display()
        );
        eprintln!("case: {args:?} {env:?}");
        on_terminal(&line, env)
            .success()
            .stdout(contains("scanned").not());
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
    mwx(&w).arg("sync").assert().success();
    std::fs::write(
        w.code.join("index.php"),
        "<?php\n// ONE\n// two\n// three\n",
    )
    .unwrap();
    std::fs::remove_file(w.code.join("gone.php")).unwrap();
    std::fs::write(w.code.join("new.php"), "1\n2\n").unwrap();

    let run = mwx(&w).args(["diff", "--stat"]).assert().code(1);
    let (stdout, _) = texts(&run);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "diff: 1 modified, 1 added, 1 deleted against the image last synced",
            " gone.php  |     4 ----",
            " index.php |     3 ++-",
            " new.php   |     2 ++",
            " 3 files changed, 4 insertions(+), 5 deletions(-)",
        ],
        "{stdout}"
    );
    let run = mwx(&w).args(["--json", "diff", "--stat"]).assert().code(1);
    let j: serde_json::Value = serde_json::from_slice(&run.get_output().stdout).unwrap();
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
    mwx(&w).arg("sync").assert().success();
    let line = format!(
        "{} --config {} apply permissions",
        bin().display(),
        w.config.display()
    );
    on_terminal(&line, Some(("TERM", "xterm")))
        .success()
        .stdout(contains("apply permissions: ").and(contains("scanned")));
}

/// Runs the shell command line `line` on a pseudo-terminal (`script`), outside systemd, with
/// one extra environment variable; its transcript (stdout) is what the terminal showed.
fn on_terminal(line: &str, env: Option<(&str, &str)>) -> Assert {
    let mut cmd = Command::new("script");
    cmd.args(["-qec", line, "/dev/null"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID");
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.assert()
}
