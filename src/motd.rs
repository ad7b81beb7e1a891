//! The login banner for engineers (`mw-experimental motd`, and the package's update-motd.d
//! fragment that runs it at every ssh login).
//!
//! It says what this node is and what that means, which image the tree is at (tag and publish
//! date), the last and next sync, the local edits, the holds, and the three commands engineers
//! need. It is built from the configuration, the state file and the hold spool only: it must
//! never walk the tree, run a subprocess or reach the network, so a login never waits on the API
//! server or containerd. With the switch off it is empty.

use crate::config::Config;
use crate::hold::Spool;
use crate::plan::Component;
use crate::state::State;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// The engineer who logs in: uid and name (see [`crate::accounts::caller`]).
pub type Caller = (u32, String);

/// The banner's text; empty when the switch is off. With a `caller` (an engineer, not root
/// itself) it begins by greeting them with their own edits and holds.
pub fn render(
    cfg: &Config,
    state: Option<&State>,
    spool: &Spool,
    now: SystemTime,
    caller: Option<&Caller>,
) -> String {
    if !cfg.enabled {
        return String::new();
    }
    let tree = cfg.code.path.display();
    let mut out = String::new();
    let census = state
        .and_then(|s| s.components.get(&Component::Code))
        .map(|c| &c.plan.observed["edits"])
        .filter(|e| e.is_object());
    if let Some(c) = caller {
        out.push_str(&greeting(c, census, spool));
    }
    let _ = writeln!(
        out,
        "This is an mw-experimental node: {tree} is served live to requests routed here with X-Wikimedia-Debug."
    );
    let _ = writeln!(
        out,
        "  Edits take effect at once. Every hour the tree follows production's newest image; edited files are kept."
    );
    let code = state.and_then(|s| s.components.get(&Component::Code));
    let observed = code.map(|c| &c.plan.observed);
    match observed.and_then(|o| o["image"].as_str()) {
        Some(reference) => {
            let synced = observed
                .and_then(|o| o["synced_at"].as_str())
                .unwrap_or("an unknown time");
            let _ = writeln!(
                out,
                "  image:    {} (synced {synced})",
                describe_image(reference)
            );
            let follows = match observed.and_then(|o| o["release_file"].as_str()) {
                Some(f) => format!("the image production's release names ({f})"),
                None => "the newest image on this node".to_string(),
            };
            let _ = writeln!(out, "  follows:  {follows}");
        }
        None => {
            let _ = writeln!(out, "  image:    not synced yet");
        }
    }
    let last = state
        .and_then(|s| s.last_sync.as_ref())
        .map(|r| {
            let mut s = format!("{} {}", r.at, r.result);
            if let Some(e) = &r.error {
                s.push_str(": ");
                s.extend(e.chars().take(120));
            }
            s
        })
        .unwrap_or_else(|| "never".into());
    let _ = writeln!(out, "  syncs:    last {last}; next {}", next_sync(now));
    match census {
        Some(e) => {
            let total = e["total"].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "  edits:    {total} edit{}{} as of the last sync ({}); `mw-experimental diff` lists them, `diff --mine` yours",
                if total == 1 { "" } else { "s" },
                if total == 0 {
                    String::new()
                } else {
                    format!(": {}", per_editor(e))
                },
                e["counted_at"].as_str().unwrap_or("at an unknown time")
            );
        }
        None => {
            let edits = observed
                .and_then(|o| o["local_edits"].as_u64())
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "  edits:    {edits} local edit{} kept (`mw-experimental diff` lists them)",
                if edits == 1 { "" } else { "s" }
            );
        }
    }
    if spool.active.is_empty() {
        let _ = writeln!(out, "  holds:    none: the tree follows each new image");
    } else {
        let _ = writeln!(
            out,
            "  HELD:     the code refresh is paused ({} hold{}):",
            spool.active.len(),
            if spool.active.len() == 1 { "" } else { "s" }
        );
        for h in &spool.active {
            let _ = writeln!(out, "            {}", h.describe());
        }
    }
    let _ = writeln!(
        out,
        "  commands: mw-experimental diff [--patch] [PATH]   your edits against the image"
    );
    let _ = writeln!(
        out,
        "            mw-experimental reset PATH               restore from the image (backed up first)"
    );
    let _ = writeln!(
        out,
        "            mw-experimental hold --reason TEXT [--for 8h]; release   pause / resume the code refresh"
    );
    out
}

/// "alice 2, bob 1, unknown 1": a census's `by_editor` (the fact's `code.edits`), as
/// `status` and the banner print it.
pub fn per_editor(census: &serde_json::Value) -> String {
    census["by_editor"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let who = match (c["user"].as_str(), c["uid"].as_u64()) {
                        (Some(u), _) => u.to_string(),
                        (None, Some(uid)) => format!("uid {uid}"),
                        (None, None) => "unknown".into(),
                    };
                    format!("{who} {}", c["edits"].as_u64().unwrap_or(0))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The caller's own edits in a census: (count, newest path and time when known).
pub fn own_edits(census: &serde_json::Value, uid: u32) -> (u64, Option<(String, String)>) {
    let count = census["by_editor"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["uid"].as_u64() == Some(uid as u64))
        .and_then(|c| c["edits"].as_u64())
        .unwrap_or(0);
    let newest = census["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["uid"].as_u64() == Some(uid as u64))
        .map(|e| {
            (
                e["path"].as_str().unwrap_or_default().to_string(),
                e["changed_at"]
                    .as_str()
                    .unwrap_or("an unknown time")
                    .to_string(),
            )
        });
    (count, newest)
}

/// The first lines for an engineer: their own edits (as of the last sync) and holds.
fn greeting(caller: &Caller, census: Option<&serde_json::Value>, spool: &Spool) -> String {
    let (uid, name) = caller;
    let mut out = String::new();
    let total = census.and_then(|e| e["total"].as_u64()).unwrap_or(0);
    match census.map(|e| own_edits(e, *uid)) {
        None => {
            let _ = writeln!(
                out,
                "Hello {name}: your edits here are counted at the next sync; `mw-experimental diff --mine` lists them now."
            );
        }
        Some((0, _)) => {
            let _ = writeln!(
                out,
                "Hello {name}: none of the {total} edit{} here is yours (as of the last sync).",
                if total == 1 { "" } else { "s" }
            );
        }
        Some((n, newest)) => {
            let _ = writeln!(
                out,
                "Hello {name}: {n} of the {total} edit{} here {} yours{} (as of the last sync; `mw-experimental diff --mine` lists them).",
                if total == 1 { "" } else { "s" },
                if n == 1 { "is" } else { "are" },
                newest
                    .map(|(p, t)| format!(", newest {p} at {t}"))
                    .unwrap_or_default()
            );
        }
    }
    for h in spool.active.iter().filter(|h| h.uid == *uid) {
        let _ = writeln!(out, "  Your hold: {}", h.describe());
    }
    out
}

/// "TAG (published DATE)" for a reference with a publish tag (`repo:TAG`, or a directory image
/// named after its tag); the tag, or the reference as it is, otherwise.
pub fn describe_image(reference: &str) -> String {
    let tag = match reference.rsplit_once(':') {
        Some((_, t)) if !t.contains('/') => t,
        _ => reference.rsplit('/').next().unwrap_or(reference),
    };
    match crate::image::parse_publish_tag(tag) {
        Some(t) if t.time >= 0 => format!(
            "{tag} (published {})",
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(t.time as u64)
            )
        ),
        _ => tag.to_string(),
    }
}

/// When the packaged timer (`OnCalendar=hourly`, `RandomizedDelaySec=15min`) runs next, from
/// the clock alone: between the next full hour and a quarter past.
fn next_sync(now: SystemTime) -> String {
    let unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hour = (unix / 3600 + 1) * 3600;
    let hm = |t: u64| {
        let s = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(t))
            .to_string();
        s[11..16].to_string()
    };
    format!(
        "between {} and {} UTC (hourly timer)",
        hm(hour),
        hm(hour + 15 * 60)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn image_tags_get_their_publish_date() {
        assert_eq!(
            describe_image("docker-registry.discovery.wmnet/restricted/mediawiki-multiversion:2026-11-20-101010-publish-3"),
            "2026-11-20-101010-publish-3 (published 2026-11-20T10:10:10Z)"
        );
        assert_eq!(describe_image("localhost:5000/mw"), "mw");
        assert_eq!(
            describe_image("/srv/images/2026-11-20-101010-publish-3"),
            "2026-11-20-101010-publish-3 (published 2026-11-20T10:10:10Z)"
        );
    }

    #[test]
    fn the_banner_says_which_release_file_the_tree_follows() {
        let cfg = Config::load(Path::new("/nonexistent"), false)
            .map(|mut c| {
                c.enabled = true;
                c
            })
            .unwrap();
        let mut state = State::default();
        let mut code = crate::state::ComponentState::default();
        code.plan.observed = serde_json::json!({
            "image": "registry/restricted/mediawiki-multiversion:2026-11-20-101010-publish",
            "release_file": "/etc/helmfile-defaults/mediawiki/release/mw-experimental-pinkllama-eqiad.yaml",
        });
        state.components.insert(Component::Code, code);
        let text = render(
            &cfg,
            Some(&state),
            &Spool::default(),
            SystemTime::now(),
            None,
        );
        assert!(
            text.contains("2026-11-20-101010-publish (published 2026-11-20T10:10:10Z)"),
            "{text}"
        );
        assert!(
            text.contains("follows:  the image production's release names (/etc/helmfile-defaults/mediawiki/release/mw-experimental-pinkllama-eqiad.yaml)"),
            "{text}"
        );
        state
            .components
            .get_mut(&Component::Code)
            .unwrap()
            .plan
            .observed["release_file"] = serde_json::Value::Null;
        let text = render(
            &cfg,
            Some(&state),
            &Spool::default(),
            SystemTime::now(),
            None,
        );
        assert!(
            text.contains("follows:  the newest image on this node"),
            "{text}"
        );
    }

    #[test]
    fn next_sync_is_the_next_full_hour() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(3600 * 10 + 59);
        assert_eq!(next_sync(t), "between 11:00 and 11:15 UTC (hourly timer)");
    }
}
