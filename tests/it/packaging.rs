//! What the Debian package ships besides the binary: the man pages and completion scripts
//! that `debian/rules` generates with the hidden `generate` command, and the package version.

use crate::support::*;
use std::process::Command;

#[test]
fn generate_man_writes_one_page_per_command_that_man_can_render() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["generate", "man"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "mw-experimental.1",
        "mw-experimental-plan.1",
        "mw-experimental-apply.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH mw-experimental"), "{page}: {text}");
    }
    // The packaging-only command stays out of the user's documentation.
    assert!(!dir.path().join("mw-experimental-generate.1").exists());
    let main = std::fs::read_to_string(dir.path().join("mw-experimental.1")).unwrap();
    assert!(!main.contains("generate"), "{main}");
}

#[test]
fn generate_completion_prints_a_script_bash_accepts() {
    let out = Command::new(bin())
        .args(["generate", "completion", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("complete -F _mw__experimental"), "{script}");
    // bash -n: the script parses; then the function completes subcommand names.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mw-experimental");
    std::fs::write(&file, &script).unwrap();
    let words = Command::new("bash")
        .arg("-c")
        .arg(
            r#"source "$1" && COMP_WORDS=(mw-experimental pl) COMP_CWORD=1 && _mw__experimental mw-experimental pl mw-experimental && printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(&file)
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&words.stdout);
    assert!(words.lines().any(|w| w == "plan"), "completions: {words:?}");
}

/// The package's version is debian/changelog's: its upstream part must be the crate's, or the
/// .deb would claim a version the binary does not report.
#[test]
fn debian_changelog_is_at_the_crates_version() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("dpkg-parsechangelog")
        .arg("-l")
        .arg(root.join("debian/changelog"))
        .args(["-S", "Version"])
        .output()
        .expect("dpkg-parsechangelog (dpkg-dev): run tests/install-deps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8(out.stdout).unwrap();
    let upstream = version
        .trim()
        .rsplit_once('-')
        .map_or(version.trim(), |(u, _)| u);
    assert_eq!(
        upstream,
        env!("CARGO_PKG_VERSION"),
        "debian/changelog: {version}"
    );
}
