//! File system primitives for a tree that unprivileged engineers write while root works on it:
//! directory-fd-relative access that never follows a symlink ([`at`]), the one traversal every
//! caller uses ([`walk`]), the kernel's POSIX ACL attribute format ([`acl`]), and the thread
//! that closes what a sync replaced or removed, so freeing it costs the writer nothing
//! ([`reap`]).
//!
//! Nothing here knows the permission policy, manifests or images, and nothing here imports from
//! a higher layer (components, commands, cli): callers bring the decisions, these modules bring
//! the safe way to reach an entry.

pub mod acl;
pub mod at;
pub mod reap;
pub mod walk;
