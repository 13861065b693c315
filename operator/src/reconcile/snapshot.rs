//! The snapshot step: a server's members as the caches hold them, compiled and encoded, kept
//! while nothing the compiler reads has changed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef as KubeRef;
use kube::{Resource, ResourceExt};
use tracing::info;
use virtmail_crds::encoding::{self, Encoder};
use virtmail_crds::{
    Compiled, Inputs, Kind, MailAlias, MailDomain, MailServer, Mailbox, ObjectRef, Objects,
    compile, recompile_alias, recompile_mailbox,
};

use super::status::Owed;
use super::{Context, server_key, servers_of};
use crate::cache::MemberCache;
use crate::error::{Error, Result};

/// The most member changes applied in place at once. A creation or deletion walks every entry
/// once (see `crds::recompile_mailbox`), so a batch, such as a bulk import's, costs its size
/// times a walk: past a few dozen, one full compile is cheaper (at 100,000 Mailboxes a walk is
/// about 20 ms and a full compile about 700 ms).
pub(super) const IN_PLACE_LIMIT: usize = 32;

/// The member objects of one namespace, as the caches hold them at one moment. Held only while
/// compiling: the caches replace objects as their statuses change, and holding the old ones
/// would keep two copies of 100,000 Mailboxes alive.
struct Members {
    servers: Vec<Arc<MailServer>>,
    domains: Vec<Arc<MailDomain>>,
    mailboxes: Vec<Arc<Mailbox>>,
    aliases: Vec<Arc<MailAlias>>,
}

impl Members {
    fn of(ctx: &Context, namespace: &str) -> Members {
        Members {
            servers: servers_of(&ctx.servers, Some(namespace)),
            domains: ctx.domains.in_namespace(namespace),
            mailboxes: ctx.mailboxes.in_namespace(namespace),
            aliases: ctx.aliases.in_namespace(namespace),
        }
    }

    fn inputs<'a>(&'a self, server: &'a MailServer) -> Inputs<'a> {
        Inputs {
            server,
            servers: (&self.servers).into(),
            domains: (&self.domains).into(),
            mailboxes: (&self.mailboxes).into(),
            aliases: (&self.aliases).into(),
        }
    }
}

/// What the compiler's result depends on besides the member caches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotKey {
    /// [`InputChanges::epoch`](crate::input_changes::InputChanges::epoch) read before the
    /// caches were.
    epoch: u64,
    /// What the compile depends on besides the members: the server's spec and which servers
    /// of the namespace there are (which one serves a domain several select).
    servers: ServersKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ServersKey {
    /// The server's uid and generation (its spec).
    server_uid: Option<String>,
    server_generation: Option<i64>,
    /// The uid and generation of every server of the namespace.
    neighbours: Vec<(Option<String>, Option<i64>, bool)>,
}

impl SnapshotKey {
    fn of(ctx: &Context, server: &MailServer) -> SnapshotKey {
        let mut neighbours: Vec<_> = servers_of(&ctx.servers, server.namespace().as_deref())
            .iter()
            .map(|s| {
                (
                    s.meta().uid.clone(),
                    s.meta().generation,
                    s.meta().deletion_timestamp.is_some(),
                )
            })
            .collect();
        neighbours.sort();
        SnapshotKey {
            epoch: ctx.input_changes.epoch(),
            servers: ServersKey {
                server_uid: server.meta().uid.clone(),
                server_generation: server.meta().generation,
                neighbours,
            },
        }
    }
}

/// One compile and its encoding. Kept until the server's inputs change: a reconcile of an
/// unchanged server (an owned object edited, the periodic requeue) reuses it instead of
/// compiling 100,000 mailboxes again, and the members' status task shares it, so there is one
/// compiled directory in memory, not one per reconcile in flight.
pub(super) struct Snapshot {
    key: SnapshotKey,
    pub(super) compiled: Compiled,
    /// The encoding of `compiled`, kept so that an in-place edit re-encodes only its shard.
    encoder: Encoder,
    /// How it was made (for the log and the metrics).
    pub(super) made: Made,
}

/// How a snapshot was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Made {
    /// Compiled and encoded from scratch.
    Full,
    /// Mailbox and MailAlias changes applied to the previous snapshot; only their shards
    /// encoded again.
    InPlace {
        /// Mailbox and alias entries that changed.
        entries: usize,
        /// Shards encoded again.
        shards: usize,
        /// Whether the kept compile was still shared and had to be copied first.
        copied: bool,
    },
}

impl Made {
    /// For logs and metrics.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Made::Full => "full",
            Made::InPlace { .. } => "in_place",
        }
    }
}

impl Snapshot {
    /// The encoded directory.
    pub(super) fn encoded(&self) -> &encoding::Encoded {
        self.encoder.encoded()
    }
}

impl Context {
    /// The server's snapshot for these inputs: the kept one if its key still holds; else the
    /// kept one with the Mailbox and MailAlias changes since applied in place, when those were
    /// all that changed (see [`recompile_mailbox`], [`recompile_alias`]); else a new compile. The outdated snapshot is let
    /// go first (with the status task that works from it), so the old and the new directory are
    /// never in memory together.
    pub(super) async fn snapshot(&self, server: &MailServer, namespace: &str) -> Arc<Snapshot> {
        let server_key = server_key(server);
        // The epoch first: the caches read after it hold at least every change it counts.
        let key = SnapshotKey::of(self, server);
        let kept = {
            let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(kept) = snapshots.get(&server_key)
                && kept.key == key
            {
                return kept.clone();
            }
            snapshots.remove(&server_key)
        };
        self.forget_deleted_servers();
        let task = self
            .member_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&server_key);
        if let Some((running, task)) = task {
            drop(running);
            task.abort();
            // Cancelled at its next await; then the kept snapshot is ours alone.
            let _ = task.await;
        }
        let in_place = kept
            .filter(|kept| kept.key.servers == key.servers)
            .and_then(|kept| self.apply_mailbox_edits(server, namespace, kept));
        let (snapshot, edited) = match in_place {
            Some((compiled, encoder, made, edited)) => (
                Snapshot {
                    key,
                    compiled,
                    encoder,
                    made,
                },
                Some(edited),
            ),
            None => {
                let compiled = {
                    let members = Members::of(self, namespace);
                    compile(members.inputs(server))
                };
                let encoder = Encoder::new(&compiled.directory);
                (
                    Snapshot {
                        key,
                        compiled,
                        encoder,
                        made: Made::Full,
                    },
                    None,
                )
            }
        };
        self.owe_statuses(&server_key, edited);
        self.metrics.observe_snapshot(snapshot.made.as_str());
        let snapshot = Arc::new(snapshot);
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server_key, snapshot.clone());
        snapshot
    }

    /// The kept snapshot with the Mailbox and MailAlias changes since its epoch (edits,
    /// creations, deletions) applied in place, or none when anything else changed or a change needs a full compile.
    fn apply_mailbox_edits(
        &self,
        server: &MailServer,
        namespace: &str,
        kept: Arc<Snapshot>,
    ) -> Option<(Compiled, Encoder, Made, BTreeSet<ObjectRef>)> {
        let changes = self
            .input_changes
            .member_changes_since(namespace, kept.key.epoch)
            .filter(|c| c.mailboxes.len() + c.aliases.len() <= IN_PLACE_LIMIT)?;
        // Ours alone unless a reconcile still holds it; then a copy.
        let (mut compiled, mut encoder, copied) = match Arc::try_unwrap(kept) {
            Ok(kept) => (kept.compiled, kept.encoder, false),
            Err(shared) => (shared.compiled.clone(), shared.encoder.clone(), true),
        };
        let domains = self.domains.in_namespace(namespace);
        let inputs = Inputs {
            server,
            servers: Objects::Slice(&[]),
            domains: (&domains).into(),
            mailboxes: Objects::Slice(&[]),
            aliases: Objects::Slice(&[]),
        };
        // Mailboxes first, then aliases: each step starts from the compile of the inputs as
        // the steps before it left them.
        let mut mailbox_keys = Vec::new();
        for name in &changes.mailboxes {
            let mailbox = self.mailboxes.get(namespace, name);
            mailbox_keys
                .extend(recompile_mailbox(&mut compiled, inputs, name, mailbox.as_deref()).ok()?);
        }
        let mut alias_keys = Vec::new();
        for name in &changes.aliases {
            let alias = self.aliases.get(namespace, name);
            alias_keys.extend(recompile_alias(&mut compiled, inputs, name, alias.as_deref()).ok()?);
        }
        let update = encoder.update_entries(
            &compiled.directory,
            mailbox_keys.iter().map(String::as_str),
            alias_keys.iter().map(String::as_str),
        );
        let made = Made::InPlace {
            entries: mailbox_keys.len() + alias_keys.len(),
            shards: update.shards,
            copied,
        };
        // Statuses are owed to the changed objects that are members now: a deleted one has
        // none, and one of another server's domains is that server's to report.
        let mailboxes = changes.mailboxes.into_iter().map(|name| ObjectRef {
            kind: Kind::Mailbox,
            name,
        });
        let aliases = changes.aliases.into_iter().map(|name| ObjectRef {
            kind: Kind::MailAlias,
            name,
        });
        let edited = mailboxes
            .chain(aliases)
            .filter(|object| compiled.members.binary_search(object).is_ok())
            .collect();
        Some((compiled, encoder, made, edited))
    }

    /// Drop the snapshots, status tasks and shard listings of servers no longer in the cache: a
    /// deleted server is never reconciled again, and its snapshot holds a whole compiled
    /// directory.
    fn forget_deleted_servers(&self) {
        let exists = |key: &String| {
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            self.servers
                .get(&KubeRef::new(name).within(namespace))
                .is_some()
        };
        keep_servers(&self.snapshots, exists);
        keep_servers(&self.owed_statuses, exists);
        keep_servers(&self.listed_shards, exists);
        self.member_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, (_, task)| {
                let keep = exists(key);
                if !keep {
                    task.abort();
                }
                keep
            });
    }

    /// Members' statuses are owed after a new snapshot: every member's after a full compile,
    /// the edited Mailboxes' after an in-place one.
    fn owe_statuses(&self, server_key: &str, edited: Option<BTreeSet<ObjectRef>>) {
        let mut owed = self.owed_statuses.lock().unwrap_or_else(|e| e.into_inner());
        let (serial, before) = owed.remove(server_key).unwrap_or((0, Owed::All));
        owed.insert(server_key.to_string(), (serial + 1, before.after(edited)));
    }

    /// What the next members' status task is to publish (none when nothing is owed), with the
    /// serial that [`Context::statuses_published`] takes back.
    pub(super) fn owed_statuses(&self, server_key: &str) -> Option<(u64, Owed)> {
        let owed = self.owed_statuses.lock().unwrap_or_else(|e| e.into_inner());
        match owed.get(server_key) {
            Some((_, Owed::Some(members))) if members.is_empty() => None,
            Some(owed) => Some(owed.clone()),
            None => Some((0, Owed::All)),
        }
    }

    /// A task published what was owed at `serial`; owed since (a newer snapshot) stays owed.
    pub(super) fn statuses_published(&self, server_key: &str, serial: u64) {
        let mut owed = self.owed_statuses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = owed.get_mut(server_key)
            && entry.0 == serial
        {
            entry.1 = Owed::Some(BTreeSet::new());
        }
    }

    /// Whether a snapshot's compile still reflects the caches.
    pub(super) fn is_current(&self, snapshot: &Snapshot) -> bool {
        snapshot.key.epoch == self.input_changes.epoch()
    }
}

/// Keep the entries of a per-server map whose server still `exists`.
fn keep_servers<V>(
    map: &std::sync::Mutex<std::collections::HashMap<String, V>>,
    exists: impl Fn(&String) -> bool,
) {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|key, _| exists(key));
}

/// Wait for a member cache's first list; an error only when the list has stalled for 30 s.
pub(super) async fn wait_ready<K>(cache: &MemberCache<K>, what: &str) -> Result<()> {
    if cache.is_ready() {
        return Ok(());
    }
    info!(
        listed = cache.listed(),
        "waiting for the {what} cache to be listed"
    );
    if cache.wait_ready(Duration::from_secs(30)).await {
        info!(listed = cache.listed(), "{what} cache listed");
        Ok(())
    } else {
        Err(Error::NotReady(format!(
            "{what} cache: list stalled after {} objects",
            cache.listed()
        )))
    }
}
