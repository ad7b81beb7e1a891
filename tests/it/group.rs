//! The group component against the real `groupadd`, `gpasswd` and `getent`: a fixed gid that is
//! never renumbered, members added, users that do not exist reported but not pending.

use crate::support::perm::*;
use crate::support::*;
use std::process::Command;

fn config(g_name: &str, gid: u32, members: &[&str]) -> String {
    format!(
        "enabled: true\ndeployers: {{ group: {g_name}, gid: {gid}, members: [{}] }}\n",
        members.join(", ")
    )
}

fn getent(name: &str) -> String {
    sh(Command::new("getent").args(["group", name]))
        .trim()
        .to_string()
}

#[test]
fn existing_name_with_another_gid_is_an_error_naming_both_and_nothing_changes() {
    let g = GroupGuard::create();
    let other_gid = free_gid();
    let w = World::new(&config(&g.name, other_gid, &[]));
    let before = getent(&g.name);
    for cmd in ["plan", "apply"] {
        w.run(&[cmd, "group"])
            .code(2)
            .stderr_has(&g.name)
            .stderr_has(&g.gid.to_string())
            .stderr_has(&other_gid.to_string());
    }
    assert_eq!(getent(&g.name), before, "the group was renumbered");
}

#[test]
fn gid_held_by_another_name_is_an_error_naming_both_and_nothing_is_created() {
    let g = GroupGuard::create();
    let wanted = GroupGuard::reserve();
    let w = World::new(&config(&wanted.name, g.gid, &[]));
    w.run(&["apply", "group"])
        .code(2)
        .stderr_has(&g.name)
        .stderr_has(&wanted.name)
        .stderr_has(&g.gid.to_string());
    assert!(!Command::new("getent")
        .args(["group", &wanted.name])
        .output()
        .unwrap()
        .status
        .success());
}

#[test]
fn members_are_added_and_missing_users_reported_without_blocking_convergence() {
    let g = GroupGuard::reserve();
    let alice = UserGuard::create();
    let ghost = unique("mwxnouser");
    let w = World::new(&config(&g.name, g.gid, &[&alice.name, &ghost]));

    let plan = w.run(&["--json", "plan", "group"]);
    plan.code(1);
    let p = &plan.json()["components"]["group"];
    assert_eq!(p["counts"]["group"], 1, "{p:#}");
    assert_eq!(p["counts"]["member"], 1, "{p:#}");

    w.run(&["apply", "group"]).code(0);
    assert_eq!(
        getent(&g.name),
        format!("{}:x:{}:{}", g.name, g.gid, alice.name)
    );

    // Only the missing user remains: reported in plan, state and fact, but converged.
    let plan = w.run(&["--json", "plan", "group"]);
    plan.code(0);
    let p = &plan.json()["components"]["group"];
    assert_eq!(
        p["observed"]["missing_users"],
        serde_json::json!([ghost]),
        "{p:#}"
    );
    assert!(p["notes"].to_string().contains(&ghost), "{p:#}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.state_dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        state["components"]["group"]["observed"]["missing_users"],
        serde_json::json!([ghost]),
        "{state:#}"
    );
    let fact = w.run(&["facts"]);
    fact.code(0);
    assert_eq!(
        fact.json()["mw_experimental"]["group"]["missing_users"],
        serde_json::json!([ghost]),
        "{}",
        fact.stdout
    );

    // Applying again changes nothing.
    let again = w.run(&["--json", "apply", "group"]);
    again.code(0);
    assert_eq!(
        again.json()["components"]["group"]["changes"],
        serde_json::json!([])
    );
}

#[test]
fn switch_off_leaves_the_group_as_it_is() {
    let g = GroupGuard::create();
    let alice = UserGuard::create();
    let w = World::new(
        &config(&g.name, g.gid, &[&alice.name]).replace("enabled: true", "enabled: false"),
    );
    let before = getent(&g.name);
    w.run(&["plan", "group"]).code(0);
    w.run(&["apply", "group"]).code(0);
    assert_eq!(getent(&g.name), before);
}
