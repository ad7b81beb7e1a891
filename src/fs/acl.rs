//! POSIX ACLs in the kernel's own extended-attribute format, so the walk can read and write
//! `system.posix_acl_access` / `system.posix_acl_default` on file descriptors (never by path)
//! and compare what is there with what the policy wants without libacl or `getfacl`.
//!
//! The format (linux/posix_acl_xattr.h): a little-endian `u32` version (2), then entries of
//! `{tag: u16, perm: u16, id: u32}`, sorted by tag and then id; `id` is `u32::MAX` for the
//! entries that name no user or group. An access ACL that only repeats the mode has no
//! attribute at all: [`Acl::from_mode`] builds that minimal ACL.

use thiserror::Error;

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";

const VERSION: u32 = 2;
const UNDEFINED_ID: u32 = u32::MAX;

/// Entry tags, with the kernel's values (their order is the order entries are stored in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u16)]
pub enum Tag {
    UserObj = 0x01,
    User = 0x02,
    GroupObj = 0x04,
    Group = 0x08,
    Mask = 0x10,
    Other = 0x20,
}

impl Tag {
    fn from_u16(v: u16) -> Option<Tag> {
        Some(match v {
            0x01 => Tag::UserObj,
            0x02 => Tag::User,
            0x04 => Tag::GroupObj,
            0x08 => Tag::Group,
            0x10 => Tag::Mask,
            0x20 => Tag::Other,
            _ => return None,
        })
    }
}

pub const R: u16 = 4;
pub const W: u16 = 2;
pub const X: u16 = 1;
pub const RWX: u16 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub tag: Tag,
    /// The uid or gid for `User` and `Group`; `u32::MAX` for the others.
    pub id: u32,
    /// `rwx` bits: 4, 2, 1.
    pub perm: u16,
}

/// An ACL, entries kept sorted by (tag, id) as the kernel stores them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ACL attribute of {0} bytes is not a version-2 header followed by 8-byte entries")]
    Size(usize),
    #[error("ACL attribute has version {0}, not 2")]
    Version(u32),
    #[error("ACL attribute has an entry with unknown tag {0:#x}")]
    Tag(u16),
}

impl Acl {
    /// The ACL that the mode alone implies (what the kernel reports when no attribute is set).
    pub fn from_mode(mode: u32) -> Acl {
        let p = |shift: u32| ((mode >> shift) & 7) as u16;
        Acl {
            entries: vec![
                obj(Tag::UserObj, p(6)),
                obj(Tag::GroupObj, p(3)),
                obj(Tag::Other, p(0)),
            ],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Acl, DecodeError> {
        if bytes.len() < 4 || (bytes.len() - 4) % 8 != 0 {
            return Err(DecodeError::Size(bytes.len()));
        }
        let version = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let mut entries = Vec::with_capacity((bytes.len() - 4) / 8);
        for e in bytes[4..].chunks_exact(8) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = u16::from_le_bytes([e[2], e[3]]);
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let tag = Tag::from_u16(tag).ok_or(DecodeError::Tag(tag))?;
            let id = if matches!(tag, Tag::User | Tag::Group) {
                id
            } else {
                UNDEFINED_ID
            };
            entries.push(Entry {
                tag,
                id,
                perm: perm & RWX,
            });
        }
        entries.sort();
        Ok(Acl { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut sorted = self.entries.clone();
        sorted.sort();
        let mut out = Vec::with_capacity(4 + 8 * sorted.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &sorted {
            out.extend_from_slice(&(e.tag as u16).to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    pub fn get(&self, tag: Tag, id: u32) -> Option<u16> {
        let id = if matches!(tag, Tag::User | Tag::Group) {
            id
        } else {
            UNDEFINED_ID
        };
        self.entries
            .iter()
            .find(|e| e.tag == tag && e.id == id)
            .map(|e| e.perm)
    }

    /// Sets (or adds) one entry, keeping the order.
    pub fn set(&mut self, tag: Tag, id: u32, perm: u16) {
        let id = if matches!(tag, Tag::User | Tag::Group) {
            id
        } else {
            UNDEFINED_ID
        };
        match self.entries.iter_mut().find(|e| e.tag == tag && e.id == id) {
            Some(e) => e.perm = perm,
            None => {
                self.entries.push(Entry { tag, id, perm });
                self.entries.sort();
            }
        }
    }

    /// The group-class limit: the mask when there is one, else the owning group's entry.
    pub fn group_class(&self) -> u16 {
        self.get(Tag::Mask, 0)
            .or_else(|| self.get(Tag::GroupObj, 0))
            .unwrap_or(0)
    }

    /// What a named group really gets: its entry limited by the mask.
    pub fn effective_group(&self, gid: u32) -> Option<u16> {
        self.get(Tag::Group, gid).map(|p| p & self.group_class())
    }

    /// The `rwxrwxrwx` bits of the mode this ACL implies (the group bits are the mask).
    pub fn mode_bits(&self) -> u32 {
        let u = self.get(Tag::UserObj, 0).unwrap_or(0) as u32;
        let o = self.get(Tag::Other, 0).unwrap_or(0) as u32;
        (u << 6) | ((self.group_class() as u32) << 3) | o
    }

    /// True when the ACL says no more than the mode (the kernel then stores no attribute).
    pub fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, Tag::UserObj | Tag::GroupObj | Tag::Other))
    }

    /// `getfacl`-like short text (`u::rwx,g::r-x,g:705:rwx,m::rwx,o::r-x`), for reports.
    pub fn to_text(&self) -> String {
        let perm = |p: u16| {
            format!(
                "{}{}{}",
                if p & R != 0 { 'r' } else { '-' },
                if p & W != 0 { 'w' } else { '-' },
                if p & X != 0 { 'x' } else { '-' }
            )
        };
        self.entries
            .iter()
            .map(|e| match e.tag {
                Tag::UserObj => format!("u::{}", perm(e.perm)),
                Tag::User => format!("u:{}:{}", e.id, perm(e.perm)),
                Tag::GroupObj => format!("g::{}", perm(e.perm)),
                Tag::Group => format!("g:{}:{}", e.id, perm(e.perm)),
                Tag::Mask => format!("m::{}", perm(e.perm)),
                Tag::Other => format!("o::{}", perm(e.perm)),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn obj(tag: Tag, perm: u16) -> Entry {
    Entry {
        tag,
        id: UNDEFINED_ID,
        perm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_kernel_order() {
        let mut a = Acl::from_mode(0o750);
        a.set(Tag::Mask, 0, RWX);
        a.set(Tag::Group, 705, RWX);
        a.set(Tag::User, 33, R);
        let bytes = a.encode();
        assert_eq!(bytes.len(), 4 + 6 * 8);
        assert_eq!(&bytes[0..4], &[2, 0, 0, 0]);
        // user::rwx first, then user:33
        assert_eq!(&bytes[4..12], &[1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&bytes[12..20], &[2, 0, 4, 0, 33, 0, 0, 0]);
        assert_eq!(Acl::decode(&bytes).unwrap(), a);
        assert_eq!(
            a.to_text(),
            "u::rwx,u:33:r--,g::r-x,g:705:rwx,m::rwx,o::---"
        );
        assert_eq!(a.mode_bits(), 0o770);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Acl::decode(&[2, 0, 0]), Err(DecodeError::Size(3)));
        assert_eq!(Acl::decode(&[1, 0, 0, 0]), Err(DecodeError::Version(1)));
        assert_eq!(
            Acl::decode(&[2, 0, 0, 0, 0x40, 0, 7, 0, 0, 0, 0, 0]),
            Err(DecodeError::Tag(0x40))
        );
    }

    #[test]
    fn effective_group_is_limited_by_the_mask() {
        let mut a = Acl::from_mode(0o640);
        a.set(Tag::Group, 9, RWX);
        a.set(Tag::Mask, 0, R | W);
        assert_eq!(a.effective_group(9), Some(R | W));
        assert!(!a.is_minimal());
        assert!(Acl::from_mode(0o644).is_minimal());
    }
}
