//! What a mailbox consists of on the volume, defined once for provisioning and delivery: a
//! Maildir is a directory with `tmp/ new/ cur/`, an mbox is one file, and the directories above
//! either get a mode that depends on what their mailboxes' owners must create beside them
//! (docs/PROVISIONING.md).
//!
//! # Security
//!
//! The modes are the boundary between co-tenants of the volume: a Maildir and every mail file
//! are their owner's alone, a parent directory is searchable but not listable, and a parent
//! others must write in is sticky, so nobody can rename or remove another owner's files there.
//! [`crate::fs::containment`] refuses directories that break the last rule.

use std::collections::BTreeMap;

use virtmail_crds::directory::MailboxEntry;
use virtmail_crds::resources::MailboxFormat;

/// The subdirectories of a Maildir (virtual(8) V24; `cur/` always exists, docs/DELIVERY.md).
pub const MAILDIR_SUBDIRECTORIES: [&str; 3] = ["tmp", "new", "cur"];
/// Mode of a Maildir and of its subdirectories: its owner's alone.
pub const MAILDIR_MODE: u32 = 0o700;
/// Mode of every file holding mail or its bookkeeping: an mbox, a Maildir file, the mbox
/// journal.
pub const MAIL_FILE_MODE: u32 = 0o600;
/// Mode of a parent directory the agent creates: every owner below may pass, nobody may list.
pub const SHARED_PARENT_MODE: u32 = 0o711;
/// Mode of a parent directory holding an mbox whose owner creates files beside it
/// (`<mbox>.lock`, the autoreply state): sticky and writable, like `/var/mail`.
pub const WRITABLE_PARENT_MODE: u32 = 0o1777;

/// Split a mailbox path (a Maildir's trailing `/` ignored) into its parent directory and its
/// last component: `d/bob` → (`Some("d")`, `bob`), `d/alice/` → (`Some("d")`, `alice`),
/// `bob` → (`None`, `bob`).
pub fn split_parent(path: &str) -> (Option<&str>, &str) {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    match trimmed.rsplit_once('/') {
        Some((parent, leaf)) => (Some(parent), leaf),
        None => (None, trimmed),
    }
}

/// The mode each parent directory needs, decided from every mailbox in it (not from whichever
/// comes first): [`WRITABLE_PARENT_MODE`] where any mbox lives whose owner must create files
/// beside it (its dotlock, or the state of its automatic reply), [`SHARED_PARENT_MODE`]
/// elsewhere.
pub fn parent_modes<'a>(
    entries: impl IntoIterator<Item = &'a MailboxEntry>,
    dotlock: bool,
) -> BTreeMap<String, u32> {
    let mut modes = BTreeMap::new();
    for entry in entries {
        let (Some(parent), _) = split_parent(&entry.path) else {
            continue;
        };
        let owner_writes_beside = dotlock || entry.autoreply.is_some();
        let wanted = if entry.format == MailboxFormat::Mbox && owner_writes_beside {
            WRITABLE_PARENT_MODE
        } else {
            SHARED_PARENT_MODE
        };
        let mode = modes.entry(parent.to_string()).or_insert(wanted);
        if wanted == WRITABLE_PARENT_MODE {
            *mode = wanted;
        }
    }
    modes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_and_leaf_of_both_formats() {
        assert_eq!(split_parent("d/bob"), (Some("d"), "bob"));
        assert_eq!(split_parent("d/e/alice/"), (Some("d/e"), "alice"));
        assert_eq!(split_parent("bob"), (None, "bob"));
        assert_eq!(split_parent("alice/"), (None, "alice"));
    }
}
