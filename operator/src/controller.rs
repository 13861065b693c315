//! The MailServer controller. Reconcile is a named pipeline:
//! fetch → compile → build → apply → status.
//!
//! MailServer is the root; MailDomain, Mailbox and MailAlias changes are mapped to every server
//! of their namespace (the compiler applies each server's selector), through shared member
//! caches (see [`crate::cache`]) so a reconcile never lists 100,000 mailboxes from the API.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef as KubeRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{info, warn};
use virtmail_crds::encoding::{self, LABEL_ROLE, LABEL_SERVER};
use virtmail_crds::{
    Compiled, DirectoryStatus, Inputs, Kind, MailAlias, MailDomain, MailServer, MailServerStatus,
    Mailbox, MailboxStatus, ObjectRef, compile,
};

use crate::build::{self, BuildConfig, Desired, FIELD_MANAGER};
use crate::cache::{Member, MemberCache};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::owned::{self, OwnedVersions};
use crate::pacing::WriteBudget;
use crate::status::{self, Wanted};

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
    /// The member-status task of each server, with the snapshot it works from.
    member_status: std::sync::Mutex<HashMap<String, StatusTask>>,
    /// Paces directory writes (see [`crate::pacing`]); one for all servers, as they share etcd.
    write_budget: std::sync::Mutex<WriteBudget>,
    /// Counts changes of compiler inputs (see [`compiler_input_changes`]): a snapshot compiled
    /// at epoch E is current while the epoch is still E.
    inputs_epoch: Arc<AtomicU64>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

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

/// A members' status task and the snapshot it works from.
type StatusTask = (Arc<Snapshot>, tokio::task::JoinHandle<()>);

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
struct Snapshot {
    key: SnapshotKey,
    compiled: Compiled,
    encoded: encoding::Encoded,
}

impl Context {
    /// The server's snapshot for these inputs: the kept one if its key still holds, else a new
    /// compile. Before compiling, the outdated snapshot is let go (with the status task that
    /// works from it) so the old and the new directory are never in memory together.
    fn snapshot(&self, server: &MailServer, namespace: &str) -> Arc<Snapshot> {
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

    fn budget(&self) -> std::sync::MutexGuard<'_, WriteBudget> {
        self.write_budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a snapshot's compile still reflects the caches.
    fn is_current(&self, snapshot: &Snapshot) -> bool {
        snapshot.key.epoch == self.inputs_epoch.load(Ordering::SeqCst)
    }
}

/// Wait for a member cache's first list; an error only when the list has stalled for 30 s.
async fn wait_ready<K>(cache: &MemberCache<K>, what: &str) -> Result<()> {
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

/// Server-side apply of one object, with the operator's field manager (forced: the operator owns
/// these fields).
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?)
}

/// Server-side apply of one owned object unless it still holds exactly this content from the
/// operator's last write (see [`crate::owned`]).
async fn apply_if_changed<K>(ctx: &Context, namespace: &str, object: &K) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let key = owned::key::<K>(namespace, &object.name_any());
    let hash = owned::content_hash(object);
    if ctx.owned.unchanged(&key, &hash, None) {
        return Ok(());
    }
    let written = apply(&ctx.client, namespace, object).await?;
    ctx.owned
        .wrote(key, hash, written.resource_version().unwrap_or_default());
    Ok(())
}

/// The content hash the build step put on a shard ConfigMap.
fn shard_hash(cm: &ConfigMap) -> String {
    cm.annotations()
        .get(encoding::ANNOTATION_SHARD_HASH)
        .cloned()
        .unwrap_or_default()
}

/// The apply step: shards, head, then the rest; finally shards the head no longer names.
/// The directory write is first taken from the write budget; when the budget refuses it,
/// nothing is applied and the wait is returned (see [`crate::pacing`]).
async fn apply_desired(
    ctx: &Context,
    server: &MailServer,
    namespace: &str,
    encoded: &encoding::Encoded,
    desired: &Desired,
) -> Result<Option<Duration>> {
    let client = &ctx.client;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let server_name = server.name_any();
    let shard_selector = format!("{LABEL_SERVER}={server_name},{LABEL_ROLE}=shard");
    let existing = config_maps
        .list_metadata(&ListParams::default().labels(&shard_selector))
        .await?;
    let existing_versions: HashMap<String, String> = existing
        .items
        .iter()
        .filter(|m| build::owned_by(*m, server))
        .map(|m| (m.name_any(), m.resource_version().unwrap_or_default()))
        .collect();
    // Shards: skip those present exactly as we last wrote them, with the content we want now
    // (same hash, same resourceVersion); a hand edit changes the resourceVersion and gets
    // overwritten.
    let shard_key = |name: &str| owned::key::<ConfigMap>(namespace, name);
    let to_apply: Vec<usize> = (0..encoded.shards.len())
        .filter(|&index| {
            let shard = &encoded.shards[index];
            !existing_versions.get(&shard.name).is_some_and(|current| {
                ctx.owned
                    .unchanged(&shard_key(&shard.name), &shard.hash, Some(current))
            })
        })
        .collect();
    // The head changes only with its shards (an unchanged apply writes no etcd revision).
    if !to_apply.is_empty() {
        let written = to_apply
            .iter()
            .map(|&index| encoding::data_size(&encoded.shards[index].data) as u64)
            .sum::<u64>()
            + encoding::data_size(&encoded.head) as u64;
        let whole = encoded.shard_bytes() + encoding::data_size(&encoded.head) as u64;
        if let Err(wait) = ctx.budget().take(written, whole, Instant::now()) {
            return Ok(Some(wait));
        }
        ctx.metrics.observe_written(written);
    }
    let results: Vec<Result<ConfigMap>> = stream::iter(to_apply)
        .map(|index| {
            // Indices, not references: a stream of borrowed shards is not `Send` for every
            // lifetime, which the controller requires.
            let config_map = build::shard_config_map(server, &encoded.shards[index]);
            async move { apply(client, namespace, &config_map).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for result in results {
        let cm = result?;
        ctx.owned.wrote(
            shard_key(&cm.name_any()),
            shard_hash(&cm),
            cm.resource_version().unwrap_or_default(),
        );
    }
    // Each of the rest is skipped while it holds our last write (an edit of one Mailbox
    // changes only a shard and the head).
    apply_if_changed(ctx, namespace, &desired.head).await?;
    apply_if_changed(ctx, namespace, &desired.postfix).await?;
    apply_if_changed(ctx, namespace, &desired.service_account).await?;
    apply_if_changed(ctx, namespace, &desired.role).await?;
    apply_if_changed(ctx, namespace, &desired.role_binding).await?;
    apply_if_changed(ctx, namespace, &desired.service).await?;
    apply_if_changed(ctx, namespace, &desired.network_policy).await?;
    apply_if_changed(ctx, namespace, &desired.stateful_set).await?;
    match &desired.pod_disruption_budget {
        Some(pdb) => {
            apply_if_changed(ctx, namespace, pdb).await?;
        }
        None => {
            // Only a budget the watch has seen can be there to delete.
            let key = owned::key::<PodDisruptionBudget>(namespace, &server_name);
            let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
            if ctx.owned.observed(&key)
                && let Some(pdb) = pdbs.get_opt(&server_name).await?
                && build::owned_by(&pdb, server)
            {
                pdbs.delete(&server_name, &DeleteParams::default()).await?;
                ctx.owned.forget(&key);
            }
        }
    }
    // Only now, with the head naming the new shards applied, remove shards nobody names.
    let wanted: std::collections::HashSet<&str> =
        encoded.shards.iter().map(|s| s.name.as_str()).collect();
    for name in existing_versions
        .keys()
        .filter(|n| !wanted.contains(n.as_str()))
    {
        match config_maps.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        ctx.owned.forget(&shard_key(name));
    }
    Ok(None)
}

fn object_status_patch(
    api_version: &str,
    kind: &str,
    status: serde_json::Value,
) -> serde_json::Value {
    json!({ "apiVersion": api_version, "kind": kind, "status": status })
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// One member status patch, decided synchronously (cheap, no allocation for members whose
/// status is already right) and sent later: at 100,000 members only the few patches in flight
/// may hold a request future or an object.
struct MemberPatch<K> {
    object: Arc<K>,
    status: serde_json::Value,
    event: Option<Event>,
}

/// The patch that brings one member's `Ready` condition (and extra status fields) to what is
/// wanted, if anything changes, with an Event for every change of state and every problem
/// (not for a new object becoming Ready as expected: the condition records that, and 100,000
/// Mailboxes created at once must not mean 100,000 Events).
fn member_patch<K: Member>(
    object: Arc<K>,
    wanted: Wanted,
    extra: serde_json::Value,
    extra_changed: bool,
) -> Option<MemberPatch<K>> {
    let existing = object.conditions();
    let generation = object.meta().generation;
    let merged = status::merge(existing, std::slice::from_ref(&wanted), generation, &now());
    if !extra_changed && !status::differs(existing, &merged) {
        return None;
    }
    let mut status = json!({ "observedGeneration": generation, "conditions": merged });
    if let (Some(target), serde_json::Value::Object(extra)) = (status.as_object_mut(), extra) {
        target.extend(extra);
    }
    let transition = match existing.iter().find(|c| c.type_ == wanted.type_) {
        Some(p) => (p.status == "True") != wanted.status || p.reason != wanted.reason,
        None => !wanted.status,
    };
    // A problem is a Warning even when mail still flows (a degraded domain).
    let problem = !wanted.status || wanted.reason != status::PUBLISHED;
    let event = transition.then(|| Event {
        type_: if problem {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: wanted.reason,
        note: Some(wanted.message),
        action: "Compile".into(),
        secondary: None,
    });
    Some(MemberPatch {
        object,
        status,
        event,
    })
}

/// Send one member status patch (server-side apply of the status) and its Event.
async fn send_member_patch<K>(ctx: &Context, patch: MemberPatch<K>) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let object = patch.object;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let body = object_status_patch(&K::api_version(&()), &K::kind(&()), patch.status);
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    if let Some(event) = patch.event
        && let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await
    {
        warn!(error = %e, "cannot publish event");
    }
    Ok(())
}

/// What a snapshot wants of its members' statuses.
struct MemberStatuses<'a> {
    ctx: &'a Context,
    namespace: &'a str,
    server_name: String,
    compiled: &'a Compiled,
    /// Mailboxes per domain, for the MailDomains' status (one pass, not one per domain).
    mailboxes_per_domain: HashMap<&'a str, usize>,
}

impl<'a> MemberStatuses<'a> {
    fn new(
        ctx: &'a Context,
        server: &MailServer,
        namespace: &'a str,
        compiled: &'a Compiled,
    ) -> Self {
        let mut mailboxes_per_domain: HashMap<&str, usize> = HashMap::new();
        for key in compiled.directory.mailboxes.keys() {
            if let Some((_, domain)) = key.rsplit_once('@') {
                *mailboxes_per_domain.entry(domain).or_default() += 1;
            }
        }
        MemberStatuses {
            ctx,
            namespace,
            server_name: server.name_any(),
            compiled,
            mailboxes_per_domain,
        }
    }

    /// The patch one member needs, if any (none for a member no longer in the cache).
    fn patch(&self, member: &ObjectRef) -> Option<AnyPatch> {
        let (ctx, namespace, compiled) = (self.ctx, self.namespace, self.compiled);
        let wanted = status::ready_for(compiled, member, &self.server_name);
        match member.kind {
            Kind::Mailbox => {
                let mailbox = ctx.mailboxes.get(namespace, &member.name)?;
                let base = &compiled.directory.settings.mailbox_base;
                let key = virtmail_crds::address::fold(&mailbox.spec.address);
                let entry = compiled
                    .directory
                    .mailboxes
                    .get(&key)
                    .filter(|e| e.object == member.name);
                let effective = MailboxStatus {
                    path: entry
                        .filter(|e| e.defer.is_none())
                        .map(|e| format!("{base}/{}", e.path)),
                    format: entry.map(|e| e.format),
                    uid: entry.map(|e| e.uid).filter(|uid| *uid > 0),
                    gid: entry.map(|e| e.gid).filter(|gid| *gid > 0),
                    quota: entry.and_then(|e| e.quota),
                    ..Default::default()
                };
                // Borrowed, not cloned: this runs for every member of every snapshot.
                let changed = !mailbox
                    .status
                    .as_ref()
                    .is_some_and(|shown| same_effective_values(shown, &effective));
                // Only the values there are: an absent one is left out of the apply, which
                // removes what an earlier apply of this field manager set.
                let extra = serde_json::to_value(&effective).unwrap_or_default();
                member_patch(mailbox, wanted, extra, changed).map(AnyPatch::Mailbox)
            }
            Kind::MailAlias => {
                let alias = ctx.aliases.get(namespace, &member.name)?;
                member_patch(alias, wanted, json!({}), false).map(AnyPatch::Alias)
            }
            Kind::MailDomain => {
                let domain = ctx.domains.get(namespace, &member.name)?;
                let folded = virtmail_crds::address::fold(&domain.spec.domain);
                let count = self
                    .mailboxes_per_domain
                    .get(folded.as_str())
                    .copied()
                    .unwrap_or(0);
                let extra_changed = domain.status.as_ref().is_none_or(|s| {
                    s.mailboxes as usize != count || s.servers != [self.server_name.as_str()]
                });
                let extra = json!({ "mailboxes": count, "servers": [self.server_name] });
                member_patch(domain, wanted, extra, extra_changed).map(AnyPatch::Domain)
            }
            Kind::MailServer => None,
        }
    }
}

/// The status step for members: Ready on every Mailbox, MailAlias and MailDomain of the server,
/// read from the caches as they are when each patch is decided. Stops early (successfully)
/// when the inputs change: a newer snapshot and its own task are on the way.
async fn publish_members(ctx: &Context, server: &MailServer, snapshot: &Snapshot) -> Result<()> {
    let namespace = server.namespace().unwrap_or_default();
    let statuses = MemberStatuses::new(ctx, server, &namespace, &snapshot.compiled);
    let mut pending = snapshot
        .compiled
        .members
        .iter()
        .take_while(|_| ctx.is_current(snapshot))
        .filter_map(|member| statuses.patch(member));
    // Futures are made as they are sent: 16 in flight, never one per member.
    let mut in_flight = stream::FuturesUnordered::new();
    let mut first_error = None;
    loop {
        while in_flight.len() < 16 {
            match pending.next() {
                Some(patch) => in_flight.push(send_any_patch(ctx, patch)),
                None => break,
            }
        }
        match in_flight.next().await {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                first_error.get_or_insert(error);
            }
            None => break,
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Whether two Mailbox statuses show the same values besides their conditions.
fn same_effective_values(a: &MailboxStatus, b: &MailboxStatus) -> bool {
    a.path == b.path && (a.format, a.uid, a.gid, a.quota) == (b.format, b.uid, b.gid, b.quota)
}

/// A member patch of any kind.
enum AnyPatch {
    Mailbox(MemberPatch<Mailbox>),
    Alias(MemberPatch<MailAlias>),
    Domain(MemberPatch<MailDomain>),
}

async fn send_any_patch(ctx: &Context, patch: AnyPatch) -> Result<()> {
    match patch {
        AnyPatch::Mailbox(p) => send_member_patch(ctx, p).await,
        AnyPatch::Alias(p) => send_member_patch(ctx, p).await,
        AnyPatch::Domain(p) => send_member_patch(ctx, p).await,
    }
}

/// The status step for the server itself: computed by [`status::server_status`] from what
/// was published and the StatefulSet's pods, applied only when it shows something new.
async fn publish_server(
    ctx: &Context,
    server: &MailServer,
    compiled: &Compiled,
    encoded: &encoding::Encoded,
    desired: &Desired,
) -> Result<()> {
    let namespace = server.namespace().unwrap_or_default();
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods = sets
        .get_opt(&server.name_any())
        .await?
        .and_then(|s| s.status)
        .unwrap_or_default();
    let observed = status::ServerObservation {
        compiled,
        directory: DirectoryStatus {
            version: encoded.version.clone(),
            shards: encoded.shards.len() as u32,
            bytes: encoded.shard_bytes(),
        },
        refused: &desired.refused_parameters,
        wanted_replicas: desired.stateful_set.spec.replicas.unwrap_or(1),
        replicas: pods.replicas,
        ready_replicas: pods.ready_replicas.unwrap_or(0),
        selector: build::pod_selector(&server.name_any()),
    };
    let previous = server.status.clone().unwrap_or_default();
    let new_status = status::server_status(&previous, &observed, server.meta().generation, &now());
    if !status::server_status_differs(&previous, &new_status) {
        return Ok(());
    }
    apply_server_status(ctx, server, &new_status).await?;
    let published = new_status.directory.as_ref().map(|d| &d.version);
    if previous.directory.as_ref().map(|d| &d.version) != published {
        publish_event(
            ctx,
            server,
            EventType::Normal,
            "DirectoryPublished",
            format!(
                "version {} ({} shards)",
                encoded.version,
                encoded.shards.len()
            ),
        )
        .await;
    }
    let conflict = |s: &MailServerStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::DOMAIN_CONFLICT)
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    if let Some((state, message)) = conflict(&new_status)
        && state == "True"
        && conflict(&previous) != Some((state, message.clone()))
    {
        publish_event(ctx, server, EventType::Warning, "DomainConflict", message).await;
    }
    Ok(())
}

async fn apply_server_status(
    ctx: &Context,
    server: &MailServer,
    new_status: &MailServerStatus,
) -> Result<()> {
    let api: Api<MailServer> =
        Api::namespaced(ctx.client.clone(), &server.namespace().unwrap_or_default());
    let patch = object_status_patch(
        &MailServer::api_version(&()),
        "MailServer",
        serde_json::to_value(new_status)?,
    );
    api.patch_status(
        &server.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish_event(
    ctx: &Context,
    server: &MailServer,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &server.object_ref(&())).await {
        warn!(error = %e, "cannot publish event");
    }
}

/// A failed reconcile shows on the MailServer: `Ready=False` with the error's category as
/// reason, and a Warning Event. Best effort: the API may be what failed.
async fn report_failure(ctx: &Context, server: &MailServer, error: &Error) {
    let previous = server.status.clone().unwrap_or_default();
    let message = error.to_string();
    let failed = status::failed_server_status(
        &previous,
        error.category(),
        &message,
        server.meta().generation,
        &now(),
    );
    if status::server_status_differs(&previous, &failed)
        && let Err(e) = apply_server_status(ctx, server, &failed).await
    {
        warn!(error = %e, "cannot show the reconcile failure on the MailServer");
    }
    publish_event(ctx, server, EventType::Warning, error.category(), message).await;
}

/// The members' `Ready` conditions, after the directory is published and apart from the
/// reconcile: mail depends on the directory, not on 100,000 status patches, so those must not
/// hold back the next version. A task already working from this snapshot is left alone; one
/// from an older snapshot was stopped when the new one was compiled (every patch is an
/// idempotent apply, so stopping one halfway loses nothing). Failures are retried with
/// backoff, then left to the next reconcile.
fn spawn_member_status(server: &Arc<MailServer>, ctx: &Arc<Context>, snapshot: Arc<Snapshot>) {
    let key = server_key(server);
    let mut tasks = ctx.member_status.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((running, task)) = tasks.get(&key)
        && Arc::ptr_eq(running, &snapshot)
        && !task.is_finished()
    {
        return;
    }
    let (server, task_ctx, task_snapshot) = (server.clone(), ctx.clone(), snapshot.clone());
    let task = tokio::spawn(async move {
        for attempt in 1..=3 {
            match publish_members(&task_ctx, &server, &task_snapshot).await {
                Ok(()) => return,
                Err(error) => {
                    warn!(server = %server_key(&server), category = error.category(), %error, attempt, "member status not published");
                    task_ctx.metrics.observe_status_failure(error.category());
                    tokio::time::sleep(backoff(attempt, jitter_seed())).await;
                }
            }
        }
    });
    if let Some((_, older)) = tasks.insert(key, (snapshot, task)) {
        older.abort();
    }
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

fn server_key(server: &MailServer) -> String {
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
    let snapshot = ctx.snapshot(server, &namespace);
    let compile_took = step.elapsed();
    let (compiled, encoded) = (&snapshot.compiled, &snapshot.encoded);
    // build
    let desired = build::desired(server, encoded, &ctx.config);
    // apply
    let step = Instant::now();
    if let Some(wait) = apply_desired(ctx, server, &namespace, encoded, &desired).await? {
        return Ok((paced(server, ctx, wait), None));
    }
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
        ?compile_took,
        ?apply_took,
        ?status_took,
        "reconciled"
    );
    Ok((Action::requeue(Duration::from_secs(600)), Some(snapshot)))
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
fn servers_of(store: &Store<MailServer>, namespace: Option<&str>) -> Vec<Arc<MailServer>> {
    store
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == namespace)
        .collect()
}

/// The servers a member change triggers: every one of its namespace.
fn servers_in(store: &Store<MailServer>, namespace: Option<String>) -> Vec<KubeRef<MailServer>> {
    servers_of(store, namespace.as_deref())
        .iter()
        .map(|s| KubeRef::from_obj(s.as_ref()))
        .collect()
}

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Images and defaults.
    pub config: BuildConfig,
    /// Identity in Events.
    pub instance: String,
    /// Average directory bytes written per second, over all servers (0: unpaced); see
    /// [`crate::pacing`].
    pub directory_write_rate: u64,
}

fn api_for<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What the compiler reads of a member object: its spec (`generation`), its labels (domain
/// selectors) and whether it is being deleted. Status is not among them.
fn compiler_input_fingerprint<K: Resource>(object: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let meta = object.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    hasher.finish()
}

fn uid_key<K: Resource>(object: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    object.meta().uid.hash(&mut hasher);
    hasher.finish()
}

/// What [`compiler_input_changes`] remembers of one object: 24 bytes, not the object.
struct Seen {
    fingerprint: u64,
    /// Index into the interned namespaces.
    namespace: u32,
    /// Seen in the relist under way.
    relisted: bool,
}

/// Member objects whose compiler inputs changed (created, spec or labels edited, deleted), as
/// triggers carrying the object's namespace. Status-only changes are dropped: the operator's
/// own `Ready` patches and the agent's `Provisioned` ones would otherwise trigger a reconcile
/// each (100,000 of them at scale). Every trigger advances `epoch`, which tells a reconcile
/// whether its last compile is still current.
///
/// After a relist (the watch was down, e.g. the apiserver restarted) the cache silently drops
/// objects deleted meanwhile; there is no Delete event for them, so one trigger per namespace
/// that lost objects stands in for it.
fn compiler_input_changes<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    epoch: Arc<AtomicU64>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
{
    let mut seen: HashMap<u64, Seen> = HashMap::new();
    let mut namespaces: Vec<Option<String>> = Vec::new();
    let intern =
        move |namespace: Option<String>, namespaces: &mut Vec<Option<String>>| match namespaces
            .iter()
            .position(|n| *n == namespace)
        {
            Some(index) => index as u32,
            None => {
                namespaces.push(namespace);
                (namespaces.len() - 1) as u32
            }
        };
    // kube's trigger path looks the trigger up by name, so it carries one (only its namespace
    // is mapped to servers).
    let trigger = |namespace: Option<String>| {
        ObjectMeta {
            name: Some("compiler-input-change".into()),
            namespace,
            ..ObjectMeta::default()
        }
        .into_response_partial::<K>()
    };
    events
        .map(move |event| {
            let triggers: Vec<Result<PartialObjectMeta<K>, watcher::Error>> = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    let fingerprint = compiler_input_fingerprint(&o);
                    let namespace = intern(o.meta().namespace.clone(), &mut namespaces);
                    let previous = seen.insert(
                        uid_key(&o),
                        Seen {
                            fingerprint,
                            namespace,
                            relisted: true,
                        },
                    );
                    if previous.is_some_and(|p| p.fingerprint == fingerprint) {
                        vec![]
                    } else {
                        vec![Ok(trigger(o.meta().namespace.clone()))]
                    }
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&uid_key(&o));
                    vec![Ok(trigger(o.meta().namespace.clone()))]
                }
                Ok(watcher::Event::Init) => {
                    for entry in seen.values_mut() {
                        entry.relisted = false;
                    }
                    vec![]
                }
                Ok(watcher::Event::InitDone) => {
                    let mut lost: Vec<u32> = Vec::new();
                    seen.retain(|_, entry| {
                        if !entry.relisted && !lost.contains(&entry.namespace) {
                            lost.push(entry.namespace);
                        }
                        entry.relisted
                    });
                    lost.into_iter()
                        .map(|index| Ok(trigger(namespaces[index as usize].clone())))
                        .collect()
                }
                Err(e) => vec![Err(e)],
            };
            if triggers.iter().any(Result::is_ok) {
                epoch.fetch_add(1, Ordering::SeqCst);
            }
            stream::iter(triggers)
        })
        .flatten()
}

/// The watches of owned objects: what every one of them shares.
struct OwnedWatches {
    client: Client,
    namespace: Option<String>,
    /// Selects the objects the operator manages.
    config: watcher::Config,
    /// Fed by every watch; the operator's own writes are filtered out (see [`crate::owned`]).
    versions: Arc<OwnedVersions>,
}

impl OwnedWatches {
    /// Changes of one kind of owned object, as metadata (apiserver sends no data or spec).
    fn changes<K>(
        &self,
    ) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let versions = self.versions.clone();
        watcher(
            api_for::<PartialObjectMeta<K>>(&self.client, &self.namespace),
            self.config.clone(),
        )
        .default_backoff()
        .map_ok(move |event| stream::iter(versions.observe(event).into_iter().map(Ok)))
        .try_flatten()
    }
}

/// The watch of one member kind: trimmed ([`crate::cache::trim`]) and written to its cache
/// before the events go on to the triggers.
fn member_changes<K>(
    client: &Client,
    namespace: &Option<String>,
    cache: &MemberCache<K>,
) -> stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: Member<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let cache = cache.clone();
    watcher(api_for::<K>(client, namespace), watcher::Config::default())
        .default_backoff()
        .modify(crate::cache::trim)
        .inspect_ok(move |event| cache.apply(event))
        .boxed()
}

/// Which MailServers to reconcile for each MailServer watch event: every server of the
/// namespace when one is created, changes its spec (generation) or is deleted, since which of
/// them serves a domain several select depends on all of them; nothing for status-only changes.
/// The store has applied the event already, so a new server sees its older neighbours.
fn server_triggers(
    events: impl futures::Stream<Item = Result<watcher::Event<MailServer>, watcher::Error>>
    + Send
    + 'static,
    store: Store<MailServer>,
) -> impl futures::Stream<Item = Result<MailServer, watcher::Error>> + Send + 'static {
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    events
        .map_ok(move |event| {
            let owned = |servers: Vec<Arc<MailServer>>| -> Vec<MailServer> {
                servers.iter().map(|s| s.as_ref().clone()).collect()
            };
            let mut changed = |s: &MailServer| {
                let uid = s.meta().uid.clone().unwrap_or_default();
                let generation = s.meta().generation;
                generations.insert(uid, generation) != Some(generation)
            };
            let triggered: Vec<MailServer> = match event {
                // A (re)list: the store shows the listed servers only once it is done; then
                // every server is reconciled, which also covers deletions the list missed.
                watcher::Event::InitApply(s) => {
                    changed(&s);
                    Vec::new()
                }
                watcher::Event::InitDone => owned(store.state()),
                watcher::Event::Init => Vec::new(),
                watcher::Event::Apply(s) => {
                    if changed(&s) {
                        owned(servers_of(&store, s.namespace().as_deref()))
                    } else {
                        Vec::new()
                    }
                }
                watcher::Event::Delete(s) => {
                    generations.remove(s.meta().uid.as_deref().unwrap_or_default());
                    owned(servers_of(&store, s.namespace().as_deref()))
                }
            };
            stream::iter(triggered.into_iter().map(Ok))
        })
        .try_flatten()
}

/// Run the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: RunOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = &options.namespace;
    let (domains, mailboxes, aliases) = Default::default();
    let domain_stream = member_changes(&client, ns, &domains);
    let mailbox_stream = member_changes(&client, ns, &mailboxes);
    let alias_stream = member_changes(&client, ns, &aliases);
    let owned = OwnedWatches {
        client: client.clone(),
        namespace: ns.clone(),
        config: watcher::Config::default().labels("app.kubernetes.io/managed-by=virtmail-operator"),
        versions: Arc::default(),
    };
    // MailServers trigger on spec changes only (generation): the operator's own status patch
    // must not cause the next reconcile. A server's change also triggers its neighbours (see
    // [`server_triggers`]). Owned objects trigger on any change (drift is repaired) and are
    // watched as metadata: their owner reference is all a trigger needs, and the directory
    // shards' data would otherwise come back with every write.
    let (servers, server_writer) = reflector::store::<MailServer>();
    let server_triggers = server_triggers(
        watcher(
            api_for::<MailServer>(&client, ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(server_writer),
        servers.clone(),
    );
    // No debounce: kube's is trailing-edge and keeps delaying while changes keep coming, so a
    // steady stream of Mailbox creations would never be published. Batching comes from the
    // controller itself: changes arriving during a reconcile of a server coalesce into one next
    // reconcile.
    let controller = Controller::for_stream(server_triggers, servers.clone())
        .with_config(ControllerConfig::default().concurrency(4));
    let (s1, s2, s3) = (servers.clone(), servers.clone(), servers.clone());
    let inputs_epoch = Arc::new(AtomicU64::new(0));
    let context = Arc::new(Context {
        client: client.clone(),
        config: options.config,
        domains,
        mailboxes,
        aliases,
        servers,
        metrics: metrics.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(options.instance),
            },
        ),
        failures: Mutex::default(),
        owned: owned.versions.clone(),
        snapshots: Default::default(),
        member_status: Default::default(),
        inputs_epoch: inputs_epoch.clone(),
        write_budget: std::sync::Mutex::new(WriteBudget::new(
            options.directory_write_rate,
            Instant::now(),
        )),
    });
    controller
        .owns_stream(owned.changes::<ConfigMap>())
        .owns_stream(owned.changes::<StatefulSet>())
        .owns_stream(owned.changes::<Service>())
        .owns_stream(owned.changes::<ServiceAccount>())
        .owns_stream(owned.changes::<Role>())
        .owns_stream(owned.changes::<RoleBinding>())
        .owns_stream(owned.changes::<PodDisruptionBudget>())
        .owns_stream(owned.changes::<NetworkPolicy>())
        .watches_stream(
            compiler_input_changes(domain_stream, inputs_epoch.clone()),
            move |o: PartialObjectMeta<MailDomain>| servers_in(&s1, o.namespace()),
        )
        .watches_stream(
            compiler_input_changes(mailbox_stream, inputs_epoch.clone()),
            move |o: PartialObjectMeta<Mailbox>| servers_in(&s2, o.namespace()),
        )
        .watches_stream(
            compiler_input_changes(alias_stream, inputs_epoch),
            move |o: PartialObjectMeta<MailAlias>| servers_in(&s3, o.namespace()),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    metrics.set_ready(false);
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

    fn mailbox(namespace: &str, name: &str, generation: i64, ready: bool) -> Mailbox {
        serde_json::from_value(json!({
            "apiVersion": "virtmail.io/v1alpha1",
            "kind": "Mailbox",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
                         "generation": generation},
            "spec": {"address": format!("{name}@example.test")},
            "status": {"conditions": if ready {
                json!([{"type": "Ready", "status": "True", "reason": "Published", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}])
            } else { json!([]) }},
        }))
        .expect("a Mailbox")
    }

    fn server(namespace: &str, name: &str, generation: i64) -> MailServer {
        serde_json::from_value(json!({
            "apiVersion": "virtmail.io/v1alpha1",
            "kind": "MailServer",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
                         "generation": generation},
            "spec": {},
        }))
        .expect("a MailServer")
    }

    /// Feeds `events` through a reflector and [`server_triggers`]; returns the triggered
    /// servers as `namespace/name`, sorted.
    fn server_triggers_for(events: Vec<watcher::Event<MailServer>>) -> Vec<String> {
        let (store, writer) = reflector::store::<MailServer>();
        let stream = stream::iter(events.into_iter().map(Ok)).reflect(writer);
        let mut triggered: Vec<String> =
            futures::executor::block_on(server_triggers(stream, store).try_collect::<Vec<_>>())
                .expect("no watch errors")
                .iter()
                .map(server_key)
                .collect();
        triggered.sort();
        triggered
    }

    #[test]
    fn servers_trigger_after_the_first_list_and_their_neighbours_on_spec_changes_and_deletions() {
        use watcher::Event::*;
        let (a, b, other) = (
            server("ns", "a", 1),
            server("ns", "b", 1),
            server("other", "c", 1),
        );
        let listed = vec![
            Init,
            InitApply(a.clone()),
            InitApply(b.clone()),
            InitApply(other.clone()),
            InitDone,
        ];
        assert_eq!(
            server_triggers_for(listed.clone()),
            ["ns/a", "ns/b", "other/c"]
        );
        // A status change (same generation) triggers nothing; a spec change both servers of
        // the namespace; a deletion the ones left.
        let mut events = listed.clone();
        events.push(Apply(a.clone()));
        assert_eq!(server_triggers_for(events).len(), 3);
        let mut events = listed.clone();
        events.push(Apply(server("ns", "a", 2)));
        assert_eq!(
            server_triggers_for(events),
            ["ns/a", "ns/a", "ns/b", "ns/b", "other/c"]
        );
        let mut events = listed;
        events.push(Delete(a));
        assert_eq!(
            server_triggers_for(events),
            ["ns/a", "ns/b", "ns/b", "other/c"]
        );
    }

    /// Feeds `events` through [`compiler_input_changes`] and returns the namespaces of the
    /// triggers it emitted and how far the epoch moved.
    fn triggers_for(events: Vec<watcher::Event<Mailbox>>) -> (Vec<String>, u64) {
        let epoch = Arc::new(AtomicU64::new(0));
        let triggers = futures::executor::block_on(
            compiler_input_changes(stream::iter(events.into_iter().map(Ok)), epoch.clone())
                .collect::<Vec<_>>(),
        );
        let namespaces = triggers
            .into_iter()
            .map(|t| {
                let t = t.expect("no watcher error was fed");
                assert_eq!(t.name_any(), "compiler-input-change");
                t.namespace().expect("a trigger carries its namespace")
            })
            .collect();
        (namespaces, epoch.load(Ordering::SeqCst))
    }

    #[test]
    fn compiler_inputs_trigger_on_create_edit_and_delete_but_not_on_status() {
        use watcher::Event::*;
        let (namespaces, epoch) = triggers_for(vec![
            Init,
            InitApply(mailbox("a", "u1", 1, false)),
            InitDone,
            // The operator's own Ready patch: status only.
            Apply(mailbox("a", "u1", 1, true)),
            // A spec edit moves the generation.
            Apply(mailbox("a", "u1", 2, true)),
            Apply(mailbox("b", "u2", 1, false)),
            Delete(mailbox("b", "u2", 1, false)),
        ]);
        assert_eq!(namespaces, ["a", "a", "b", "b"]);
        assert_eq!(epoch, 4, "every trigger advances the epoch");
    }

    #[test]
    fn objects_lost_in_a_relist_trigger_their_namespace_once() {
        use watcher::Event::*;
        let (namespaces, epoch) = triggers_for(vec![
            Init,
            InitApply(mailbox("a", "u1", 1, false)),
            InitApply(mailbox("a", "u2", 1, false)),
            InitApply(mailbox("b", "u3", 1, false)),
            InitApply(mailbox("c", "u4", 1, false)),
            InitDone,
            // The watch was down; u1 and u2 (namespace a) were deleted meanwhile, c unchanged.
            Init,
            InitApply(mailbox("b", "u3", 1, false)),
            InitApply(mailbox("c", "u4", 1, true)),
            InitDone,
            // A second relist that loses nothing triggers nothing.
            Init,
            InitApply(mailbox("b", "u3", 1, false)),
            InitApply(mailbox("c", "u4", 1, true)),
            InitDone,
        ]);
        assert_eq!(namespaces, ["a", "a", "b", "c", "a"]);
        assert_eq!(epoch, 5);
    }
}
