//! What changed among the compiler's inputs, and when. Every change moves one epoch (a snapshot
//! compiled at epoch E is current while the epoch is still E) and is remembered for a while
//! with its namespace and what it was, so that a reconcile can tell a run of Mailbox and MailAlias
//! changes, which it applies to the kept compile, from anything else, which needs a full one.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many changes are remembered (about 100 bytes each). A reconcile that has fallen further
/// behind compiles from scratch.
const REMEMBERED: usize = 10_000;

/// One change of a compiler input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The Mailbox of this name was created, deleted, or its spec or labels changed.
    Mailbox(String),
    /// The MailAlias of this name was created, deleted, or its spec or labels changed.
    Alias(String),
    /// Anything else: a MailDomain, a relist that lost objects.
    Other,
}

/// The Mailboxes and MailAliases of one namespace that changed, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberChanges {
    pub mailboxes: BTreeSet<String>,
    pub aliases: BTreeSet<String>,
}

#[derive(Debug)]
struct Entry {
    epoch: u64,
    namespace: Option<String>,
    change: Change,
}

#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<Entry>,
    /// Changes up to this epoch may have been forgotten.
    forgotten: u64,
}

/// The epoch and the remembered changes, shared by the watches and the reconciles.
#[derive(Debug, Default)]
pub struct InputChanges {
    epoch: AtomicU64,
    log: Mutex<Log>,
}

impl InputChanges {
    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Count one event's changes as one epoch. Called after the caches hold the change.
    pub fn record(&self, changes: impl IntoIterator<Item = (Option<String>, Change)>) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        for (namespace, change) in changes {
            log.entries.push_back(Entry {
                epoch,
                namespace,
                change,
            });
        }
        while log.entries.len() > REMEMBERED {
            let gone = log.entries.pop_front().expect("more than none");
            log.forgotten = gone.epoch;
        }
    }

    /// The Mailboxes and MailAliases of `namespace` changed after epoch `since`, when those
    /// were all the changes there (none when something else changed, or the log no longer
    /// reaches back that far).
    pub fn member_changes_since(&self, namespace: &str, since: u64) -> Option<MemberChanges> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if since < log.forgotten {
            return None;
        }
        let mut changes = MemberChanges::default();
        for entry in log.entries.iter().filter(|e| e.epoch > since) {
            if entry.namespace.as_deref() != Some(namespace) {
                continue;
            }
            match &entry.change {
                Change::Mailbox(name) => {
                    changes.mailboxes.insert(name.clone());
                }
                Change::Alias(name) => {
                    changes.aliases.insert(name.clone());
                }
                Change::Other => return None,
            }
        }
        Some(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(namespace: &str, name: &str) -> (Option<String>, Change) {
        (Some(namespace.into()), Change::Mailbox(name.into()))
    }

    fn mailboxes(names: &[&str]) -> Option<MemberChanges> {
        Some(MemberChanges {
            mailboxes: names.iter().map(|n| n.to_string()).collect(),
            aliases: BTreeSet::new(),
        })
    }

    #[test]
    fn member_changes_are_told_apart_from_anything_else_per_namespace() {
        let changes = InputChanges::default();
        changes.record([mailbox("a", "alice")]);
        let since = changes.epoch();
        changes.record([mailbox("a", "bob")]);
        changes.record([mailbox("a", "alice")]);
        changes.record([(Some("a".into()), Change::Alias("sales".into()))]);
        changes.record([(Some("b".into()), Change::Other)]);
        assert_eq!(changes.epoch(), 5);
        assert_eq!(
            changes.member_changes_since("a", since),
            Some(MemberChanges {
                mailboxes: BTreeSet::from(["alice".to_string(), "bob".to_string()]),
                aliases: BTreeSet::from(["sales".to_string()]),
            })
        );
        assert_eq!(changes.member_changes_since("b", since), None);
        assert_eq!(changes.member_changes_since("c", since), mailboxes(&[]));
        changes.record([(Some("a".into()), Change::Other)]);
        assert_eq!(changes.member_changes_since("a", since), None);
        assert_eq!(
            changes.member_changes_since("a", changes.epoch()),
            mailboxes(&[])
        );
    }

    #[test]
    fn a_reconcile_further_behind_than_the_log_reaches_compiles_from_scratch() {
        let changes = InputChanges::default();
        for _ in 0..REMEMBERED + 5 {
            changes.record([mailbox("a", "alice")]);
        }
        assert_eq!(changes.member_changes_since("a", 2), None);
        let recent = changes.epoch() - 3;
        assert_eq!(
            changes.member_changes_since("a", recent),
            mailboxes(&["alice"])
        );
    }
}
