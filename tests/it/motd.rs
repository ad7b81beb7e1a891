//! The login banner: on a node with an edit and a hold it names the image tag, the edit count
//! per editor and the hold, for root (pam_motd) and for a member alike, the member greeted first
//! with their own edits and holds; the packaged update-motd.d fragment prints root's banner;
//! with the switch off it prints nothing. (Its speed with the API server down is
//! a benchmark row, `bench/motd`, not a timed test.)

use crate::hold::{put, Node};
use crate::support::*;
use std::process::Command;

#[test]
fn the_banner_names_the_image_tag_the_edits_and_the_holds_and_is_silent_when_off() {
    let n = Node::new(1, "2026-11-20-101010-publish-1");
    let alice = &n.members[0];
    // An engineer's edit, kept across a newer image that changes the same file.
    std::fs::write(n.w.code.join("php-1.44/Setup.php"), "<?php // mine\n").unwrap();
    put(&n.img, "srv/mediawiki/php-1.44/Setup.php", "<?php // v2\n");
    n.w.run(&["sync"]).code(0);
    n.as_member(0, &["hold", "--reason", "bisecting T12345"])
        .code(0);

    // Root as pam_motd runs it: no sudo in the environment.
    let root = Out::of(
        n.w.cmd()
            .arg("motd")
            .env_remove("SUDO_UID")
            .output()
            .unwrap(),
    );
    root.code(0);
    let member = n.as_member(0, &["motd"]);
    member.code(0);
    for text in [&root.stdout, &member.stdout] {
        for want in [
            "mw-experimental node",
            "2026-11-20-101010-publish-1 (published 2026-11-20T10:10:10Z)",
            // Written in place by root: the file keeps the owner the sync gave it.
            "1 edit: unknown 1 as of the last sync",
            &format!("held by {}", alice.name),
            "bisecting T12345",
            "mw-experimental diff",
            "mw-experimental reset",
            "mw-experimental hold",
        ] {
            assert!(text.contains(want), "the banner lacks {want:?}:\n{text}");
        }
    }
    // The member is greeted first with their own edits and hold; the rest is root's banner.
    let greeting = format!(
        "Hello {}: none of the 1 edit here is yours (as of the last sync).\n  Your hold: held by {}",
        alice.name, alice.name
    );
    assert!(member.stdout.starts_with(&greeting), "{}", member.stdout);
    assert!(member.stdout.ends_with(&root.stdout), "{}", member.stdout);
    assert!(root.stdout.starts_with("This is an mw-experimental node"));

    // The packaged fragment, pointed at this build, prints the same (as pam_motd runs it).
    let fragment = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging/update-motd.d/50-mw-experimental"),
    )
    .unwrap()
    .replace("/usr/bin/mw-experimental", bin().to_str().unwrap());
    let run_fragment = || {
        Out::of(
            Command::new("sh")
                .arg("-c")
                .arg(&fragment)
                .env("MW_EXPERIMENTAL_CONFIG", &n.w.config)
                .env_remove("SUDO_UID")
                .output()
                .unwrap(),
        )
    };
    let f = run_fragment();
    f.code(0);
    assert_eq!(f.stdout, root.stdout);

    // Switch off: nothing at all, from the command and the fragment.
    let cfg = std::fs::read_to_string(&n.w.config).unwrap();
    std::fs::write(&n.w.config, cfg.replace("enabled: true", "enabled: false")).unwrap();
    let off = n.w.run(&["motd"]);
    off.code(0);
    assert_eq!(off.stdout, "", "switch off");
    let f = run_fragment();
    f.code(0);
    assert_eq!(f.stdout, "", "switch off, fragment");
}
