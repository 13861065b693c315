//! The MailServer reconcile, a named pipeline of steps, each in its own module:
//! `snapshot` (members from the caches, compiled and encoded) → [`crate::build`] (the desired
//! objects, pure) → `apply` (server-side apply) → [`status`] (the server's status now, the
//! members' in the background). [`error_policy`] and [`backoff`] decide retries; the directory
//! write budget ([`crate::pacing`]) can put a reconcile off before it writes.
//!
//! The wiring that triggers reconciles (watches, caches, the controller) is in
//! [`crate::watches`].

mod apply;
#[cfg(test)]
mod request_sequence;
mod snapshot;
pub mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Mutex;
use tracing::{info, warn};
use virtmail_crds::{MailAlias, MailDomain, MailServer, Mailbox};

use crate::build::{self, BuildConfig, FIELD_MANAGER};
use crate::cache::MemberCache;
use crate::error::{Error, Result};
use crate::input_changes::InputChanges;
use crate::metrics::Metrics;
use crate::owned::OwnedVersions;
use crate::pacing::WriteBudget;
use apply::{Applied, apply_desired};
#[cfg(test)]
use snapshot::Made;
use snapshot::{Snapshot, wait_ready};
use status::{StatusTask, publish_server, report_failure, spawn_member_status};

/// Shared state of every reconcile.
pub struct Context {
    /// API client (the operator's own identity).
    pub client: Client,
    /// Images and defaults.
    pub config: BuildConfig,
    /// Cache of MailDomains.
    pub domains: MemberCache<MailDomain>,
    /// Cache of Mailboxes.
    pub mailboxes: MemberCache<Mailbox>,
    /// Cache of MailAliases.
    pub aliases: MemberCache<MailAlias>,
    /// Cache of MailServers (to forget what deleted servers left behind).
    pub servers: Store<MailServer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Consecutive failures per server (exponential backoff).
    failures: Mutex<HashMap<String, u32>>,
    /// Versions of owned objects and of the operator's writes to them (skips unchanged
    /// applies; see [`crate::owned`]).
    owned: Arc<OwnedVersions>,
    /// The last compile of each server, reused while its inputs are unchanged.
    snapshots: std::sync::Mutex<HashMap<String, Arc<Snapshot>>>,
    /// The members' statuses each server's next status task is to publish, with a serial.
    owed_statuses: std::sync::Mutex<HashMap<String, (u64, status::Owed)>>,
    /// The member-status task of each server, with the snapshot it works from.
    member_status: std::sync::Mutex<HashMap<String, StatusTask>>,
    /// Paces directory writes (see [`crate::pacing`]); one for all servers, as they share etcd.
    write_budget: std::sync::Mutex<WriteBudget>,
    /// Changes of compiler inputs (see [`crate::watches::compiler_input_changes`]): a snapshot
    /// compiled at epoch E is current while the epoch is still E.
    input_changes: Arc<InputChanges>,
    /// The shard names each server's directory had when its shards were last listed (see
    /// `apply.rs`): while a new directory keeps them, no shard can be left over.
    listed_shards: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// The member caches the compiler reads, filled by [`crate::watches`].
#[derive(Debug, Clone, Default)]
pub struct MemberCaches {
    /// MailDomains.
    pub domains: MemberCache<MailDomain>,
    /// Mailboxes.
    pub mailboxes: MemberCache<Mailbox>,
    /// MailAliases.
    pub aliases: MemberCache<MailAlias>,
}

impl Context {
    /// The context of every reconcile. `owned` is fed by the owned objects' watches and
    /// `input_changes` by [`crate::watches::compiler_input_changes`].
    pub fn new(
        client: Client,
        config: BuildConfig,
        caches: MemberCaches,
        servers: Store<MailServer>,
        metrics: Arc<Metrics>,
        instance: String,
        watched: WatchedState,
    ) -> Context {
        let MemberCaches {
            domains,
            mailboxes,
            aliases,
        } = caches;
        Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(instance),
                },
            ),
            client,
            config,
            domains,
            mailboxes,
            aliases,
            servers,
            metrics,
            failures: Mutex::default(),
            owned: watched.owned,
            snapshots: Default::default(),
            owed_statuses: Default::default(),
            member_status: Default::default(),
            input_changes: watched.input_changes,
            listed_shards: Default::default(),
            write_budget: std::sync::Mutex::new(WriteBudget::new(
                watched.directory_write_rate,
                Instant::now(),
            )),
        }
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, WriteBudget> {
        self.write_budget.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the watches share with the reconciles besides the caches.
#[derive(Debug, Default)]
pub struct WatchedState {
    /// Versions of owned objects, fed by their watches.
    pub owned: Arc<OwnedVersions>,
    /// Fed by every change of compiler inputs.
    pub input_changes: Arc<InputChanges>,
    /// Average directory bytes written per second, over all servers (0: unpaced); see
    /// [`crate::pacing`].
    pub directory_write_rate: u64,
}

/// One reconcile of one MailServer.
pub async fn reconcile(server: Arc<MailServer>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&server, &ctx)
        .await
        .map(|(action, published)| {
            if let Some(snapshot) = published {
                spawn_member_status(&server, &ctx, snapshot);
            }
            action
        });
    ctx.metrics.observe_reconcile(
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    match &result {
        Ok(_) => {
            ctx.failures.lock().await.remove(&server_key(&server));
        }
        Err(error) => report_failure(&ctx, &server, error).await,
    }
    result
}

pub(crate) fn server_key(server: &MailServer) -> String {
    format!(
        "{}/{}",
        server.namespace().unwrap_or_default(),
        server.name_any()
    )
}

/// The pipeline; returns the snapshot for the members' status task when the server was
/// published.
async fn reconcile_inner(
    server: &MailServer,
    ctx: &Context,
) -> Result<(Action, Option<Arc<Snapshot>>)> {
    let namespace = server
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("MailServer without namespace".into()))?;
    if server.meta().deletion_timestamp.is_some() {
        // Owned objects go with the garbage collector; the volume's data is never touched.
        return Ok((Action::await_change(), None));
    }
    // fetch
    wait_ready(&ctx.domains, "MailDomain").await?;
    wait_ready(&ctx.mailboxes, "Mailbox").await?;
    wait_ready(&ctx.aliases, "MailAlias").await?;
    // While the write budget is held, a reconcile would only compile to be refused: wait
    // (changes meanwhile coalesce into the reconcile after the wait).
    if let Some(wait) = ctx.budget().held(Instant::now()) {
        return Ok((paced(server, ctx, wait), None));
    }
    // compile (or reuse the last compile while nothing it reads has changed)
    let step = Instant::now();
    let snapshot = ctx.snapshot(server, &namespace).await;
    let compile_took = step.elapsed();
    let (compiled, encoded) = (&snapshot.compiled, snapshot.encoded());
    // build
    let desired = build::desired(server, encoded, &ctx.config);
    // apply
    let step = Instant::now();
    let look_again = match apply_desired(ctx, server, &namespace, encoded, &desired).await? {
        Applied::Paced(wait) => return Ok((paced(server, ctx, wait), None)),
        Applied::Done { look_again } => look_again,
    };
    let apply_took = step.elapsed();
    // status: the server's now; the members' in the background (see spawn_member_status)
    let step = Instant::now();
    publish_server(ctx, server, compiled, encoded, &desired).await?;
    let status_took = step.elapsed();
    ctx.metrics
        .set_directory(&server_key(server), encoded.shard_bytes(), compiled);
    info!(
        server = %server_key(server),
        version = %encoded.version,
        shards = encoded.shards.len(),
        mailboxes = compiled.directory.mailboxes.len(),
        diagnostics = compiled.diagnostics.len(),
        made = snapshot.made.as_str(),
        ?compile_took,
        ?apply_took,
        ?status_took,
        "reconciled"
    );
    // A change of an owned object made while the operator wrote it had its trigger held back.
    let next = if look_again {
        Duration::ZERO
    } else {
        Duration::from_secs(600)
    };
    Ok((Action::requeue(next), Some(snapshot)))
}

/// A reconcile put off by the directory write budget.
fn paced(server: &MailServer, ctx: &Context, wait: Duration) -> Action {
    tracing::debug!(server = %server_key(server), ?wait, "directory writes paced");
    ctx.metrics.observe_paced();
    Action::requeue(wait)
}

/// Backoff: transient errors retry after 1 s, 2 s, 4 s … up to 5 min, with ±20 % jitter;
/// invalid specs are parked until the object changes.
pub fn error_policy(server: Arc<MailServer>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(server = %server_key(&server), category = error.category(), error = %error, "reconcile failed");
    if !error.is_transient() {
        return Action::await_change();
    }
    let attempt = {
        // error_policy is synchronous; a contended lock just means a default delay.
        match ctx.failures.try_lock() {
            Ok(mut failures) => {
                let count = failures.entry(server_key(&server)).or_insert(0);
                *count = count.saturating_add(1);
                *count
            }
            Err(_) => 1,
        }
    };
    Action::requeue(backoff(attempt, jitter_seed()))
}

fn jitter_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// Delay before retry number `attempt` (1-based); `seed` picks the jitter.
pub fn backoff(attempt: u32, seed: u64) -> Duration {
    let base = 1000u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(9))
        .min(300_000);
    let jitter = (seed % 401) as i64 - 200; // -20 % .. +20 %, in thousandths
    let millis = base as i64 + base as i64 * jitter / 1000;
    Duration::from_millis(millis.max(100) as u64)
}

/// The MailServers of a namespace, from the cache.
pub(crate) fn servers_of(
    store: &Store<MailServer>,
    namespace: Option<&str>,
) -> Vec<Arc<MailServer>> {
    store
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == namespace)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        assert_eq!(backoff(1, 200), Duration::from_millis(1000));
        assert_eq!(backoff(2, 200), Duration::from_millis(2000));
        assert_eq!(backoff(4, 200), Duration::from_millis(8000));
        assert_eq!(backoff(30, 200), Duration::from_millis(300_000));
        assert_eq!(backoff(1, 0), Duration::from_millis(800));
        assert_eq!(backoff(1, 400), Duration::from_millis(1200));
    }
}
