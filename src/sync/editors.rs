//! Who last changed an edit and when, as the file system tells: the data `diff`, `sync` and
//! `reset` share (an [`Edit`], the [`Census`] of edits per editor that the state keeps) and the
//! rule that names an editor. The scan that finds the edits is `diff`'s; this file only decides
//! and counts. Why the owner, and when it says nothing, is in `diff.rs`'s opening paragraph.

use rustix::fs::Stat;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

/// What an edit did to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Modified,
    Added,
    Deleted,
}

impl Change {
    pub(super) fn letter(self) -> char {
        match self {
            Change::Modified => 'M',
            Change::Added => 'A',
            Change::Deleted => 'D',
        }
    }
}

/// One edit, and who last made it and when as far as the file system tells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    pub path: String,
    pub change: Change,
    /// The editor's user name; `null` when the editor is unknown or the uid has no name.
    pub user: Option<String>,
    /// The editor's uid; `null` when unknown.
    pub uid: Option<u32>,
    /// RFC 3339, UTC; `null` when unknown.
    pub changed_at: Option<String>,
    #[serde(default)]
    pub changed_unix: Option<i64>,
    /// What `changed_at` is: `mtime` (the entry's), `directory` (for a deletion: the last
    /// change of the directory it was in, at or after the deletion), or `unknown`.
    #[serde(default)]
    pub time_of: String,
}

impl Edit {
    /// "alice", "uid 1234" (a uid without a name) or "unknown".
    pub fn editor(&self) -> String {
        match (&self.user, self.uid) {
            (Some(u), _) => u.clone(),
            (None, Some(uid)) => format!("uid {uid}"),
            (None, None) => "unknown".into(),
        }
    }
}

/// Edits per editor, for `status`, the banner and the fact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditorCount {
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub edits: u64,
    /// The newest of their edits (RFC 3339, UTC), when known.
    pub newest: Option<String>,
}

/// The edits of the whole tree summed per editor, with the newest few: what `sync` and `reset`
/// record (in `last.json`, hence the state file and the fact), so that `status`, the banner and
/// the fact can say whose edits there are without walking the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// When the tree was scanned (RFC 3339, UTC).
    pub counted_at: String,
    pub total: u64,
    /// Known editors by edit count (most first), then the unknown ones.
    pub by_editor: Vec<EditorCount>,
    /// The newest edits, at most [`RECENT`].
    pub recent: Vec<Edit>,
}

impl Census {
    /// The census of a tree with no edits, counted now.
    pub fn none() -> Census {
        Census {
            counted_at: crate::state::now().0,
            total: 0,
            by_editor: Vec::new(),
            recent: Vec::new(),
        }
    }
}

/// How many of the newest edits the census keeps (the fact goes to PuppetDB on every run).
pub const RECENT: usize = 20;

/// An editor's identity: the uid, or `None` for unknown.
pub(super) type Who = Option<u32>;

/// Names uids once per run (the user database may be LDAP).
#[derive(Default)]
pub(super) struct Names(HashMap<u32, Option<String>>);

impl Names {
    pub(super) fn get(&mut self, uid: Who) -> Option<String> {
        let uid = uid?;
        self.0
            .entry(uid)
            .or_insert_with(|| crate::accounts::user_name(uid))
            .clone()
    }
}

pub(super) fn rfc3339(unix: i64) -> Option<String> {
    let t = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(unix).ok()?))?;
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

/// Who made a modified entry: its owner when the inode was replaced (or the kind changed), or
/// when written in place by an owner who is not one the tree gives (`tree_owners`: root, which
/// the sync writes as, and `code.owner`); unknown otherwise. Pure, for the unit test.
pub(super) fn editor_of_modified(replaced: bool, owner: u32, tree_owners: &[u32]) -> Who {
    (replaced || !tree_owners.contains(&owner)).then_some(owner)
}

pub(super) fn edit(
    path: String,
    change: Change,
    who: Who,
    st: Option<&Stat>,
    names: &mut Names,
) -> Edit {
    let unix = st.map(|s| s.st_mtime);
    Edit {
        user: names.get(who),
        uid: who,
        changed_at: unix.and_then(rfc3339),
        changed_unix: unix,
        time_of: match (change, unix) {
            (_, None) => "unknown",
            (Change::Deleted, Some(_)) => "directory",
            (_, Some(_)) => "mtime",
        }
        .into(),
        path,
        change,
    }
}

/// Edits per editor: known editors by count (most first, then by name), the unknown last.
pub(super) fn per_editor(edits: &[Edit]) -> Vec<EditorCount> {
    let mut m: BTreeMap<Option<u32>, (Option<String>, u64, Option<i64>)> = BTreeMap::new();
    for e in edits {
        let c = m.entry(e.uid).or_insert((e.user.clone(), 0, None));
        c.1 += 1;
        if e.time_of == "mtime" {
            c.2 = c.2.max(e.changed_unix);
        }
    }
    let mut v: Vec<EditorCount> = m
        .into_iter()
        .map(|(uid, (user, edits, newest))| EditorCount {
            user,
            uid,
            edits,
            newest: newest.and_then(rfc3339),
        })
        .collect();
    v.sort_by(|a, b| {
        a.uid
            .is_none()
            .cmp(&b.uid.is_none())
            .then(b.edits.cmp(&a.edits))
            .then_with(|| a.user.cmp(&b.user))
            .then(a.uid.cmp(&b.uid))
    });
    v
}

/// "alice 2, bob 1, unknown 1".
pub fn describe_counts(counts: &[EditorCount]) -> String {
    counts
        .iter()
        .map(|c| {
            let who = match (&c.user, c.uid) {
                (Some(u), _) => u.clone(),
                (None, Some(uid)) => format!("uid {uid}"),
                (None, None) => "unknown".into(),
            };
            format!("{who} {}", c.edits)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_names_the_editor_of_a_replaced_inode_never_of_an_in_place_write_to_ours() {
        let tree = [0, 500];
        // vim, sed -i: a new inode, the editor's own.
        assert_eq!(editor_of_modified(true, 1001, &tree), Some(1001));
        // root replaced it (sudo vim): root's.
        assert_eq!(editor_of_modified(true, 0, &tree), Some(0));
        // Written in place: the owner is still the sync's (root) or the tree's.
        assert_eq!(editor_of_modified(false, 0, &tree), None);
        assert_eq!(editor_of_modified(false, 500, &tree), None);
        // Written in place, but the file was an engineer's before the sync adopted it.
        assert_eq!(editor_of_modified(false, 1001, &tree), Some(1001));
    }

    fn e(path: &str, uid: Option<u32>, t: Option<i64>) -> Edit {
        Edit {
            path: path.into(),
            change: Change::Modified,
            user: uid.map(|u| format!("u{u}")),
            uid,
            changed_at: t.and_then(rfc3339),
            changed_unix: t,
            time_of: if t.is_some() { "mtime" } else { "unknown" }.into(),
        }
    }

    #[test]
    fn editors_are_counted_most_first_the_unknown_last() {
        let edits = [
            e("a", None, None),
            e("b", None, None),
            e("c", None, None),
            e("d", Some(7), Some(100)),
            e("e", Some(9), Some(50)),
            e("f", Some(9), Some(200)),
        ];
        let c = per_editor(&edits);
        let got: Vec<(Option<u32>, u64, Option<String>)> = c
            .iter()
            .map(|c| (c.uid, c.edits, c.newest.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (Some(9), 2, Some("1970-01-01T00:03:20Z".into())),
                (Some(7), 1, Some("1970-01-01T00:01:40Z".into())),
                (None, 3, None),
            ]
        );
        assert_eq!(describe_counts(&c), "u9 2, u7 1, unknown 3");
    }
}
