//! The snapshot step: a server's members as the caches hold them, compiled and encoded, kept
//! while nothing the compiler reads has changed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef as KubeRef;
use kube::{Resource, ResourceExt};
use tracing::info;
use virtmail_crds::encoding;
use virtmail_crds::{Compiled, Inputs, MailAlias, MailDomain, MailServer, Mailbox, compile};

use super::{Context, server_key, servers_of};
use crate::cache::MemberCache;
use crate::error::{Error, Result};

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
    /// [`Context::inputs_epoch`] read before the caches were.
    epoch: u64,
    /// The server's uid and generation (its spec).
    server_uid: Option<String>,
    server_generation: Option<i64>,
    /// The uid and generation of every server of the namespace (which one serves a domain
    /// several select).
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
            epoch: ctx.inputs_epoch.load(Ordering::SeqCst),
            server_uid: server.meta().uid.clone(),
            server_generation: server.meta().generation,
            neighbours,
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
    pub(super) encoded: encoding::Encoded,
}

impl Context {
    /// The server's snapshot for these inputs: the kept one if its key still holds, else a new
    /// compile. Before compiling, the outdated snapshot is let go (with the status task that
    /// works from it) so the old and the new directory are never in memory together.
    pub(super) fn snapshot(&self, server: &MailServer, namespace: &str) -> Arc<Snapshot> {
        let server_key = server_key(server);
        // The epoch first: the caches read after it hold at least every change it counts.
        let key = SnapshotKey::of(self, server);
        {
            let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(kept) = snapshots.get(&server_key)
                && kept.key == key
            {
                return kept.clone();
            }
            snapshots.remove(&server_key);
        }
        self.forget_deleted_servers();
        if let Some((_, task)) = self
            .member_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&server_key)
        {
            task.abort();
        }
        let compiled = {
            let members = Members::of(self, namespace);
            compile(members.inputs(server))
        };
        let encoded = encoding::encode(&compiled.directory);
        let snapshot = Arc::new(Snapshot {
            key,
            compiled,
            encoded,
        });
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server_key, snapshot.clone());
        snapshot
    }

    /// Drop the snapshots and status tasks of servers no longer in the cache: a deleted server
    /// is never reconciled again, and its snapshot holds a whole compiled directory.
    fn forget_deleted_servers(&self) {
        let exists = |key: &String| {
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            self.servers
                .get(&KubeRef::new(name).within(namespace))
                .is_some()
        };
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| exists(key));
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

    /// Whether a snapshot's compile still reflects the caches.
    pub(super) fn is_current(&self, snapshot: &Snapshot) -> bool {
        snapshot.key.epoch == self.inputs_epoch.load(Ordering::SeqCst)
    }
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
