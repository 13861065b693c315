//! The status step. Pure functions decide every status from the compiled directory, the
//! conditions an object shows and its generation: conditions whose `lastTransitionTime` moves
//! only when their status changes, the per-member `Ready` derived from the compiler's
//! diagnostics, and the Events worth publishing. A thin layer sends the patches (server-side
//! apply of the status with the operator's field manager) and publishes the Events.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;
use virtmail_crds::encoding::Encoded;
use virtmail_crds::{
    Compiled, DirectoryStatus, Effect, Kind, MailAlias, MailDomain, MailServer, MailServerStatus,
    Mailbox, MailboxStatus, ObjectRef,
};

use super::snapshot::Snapshot;
use super::{Context, backoff, jitter_seed, server_key};
use crate::build::{self, Desired, FIELD_MANAGER};
use crate::cache::Member;
use crate::error::{Error, Result};

pub use virtmail_crds::contract::condition::{
    AVAILABLE, DIRECTORY_PUBLISHED, DOMAIN_CONFLICT, READY,
};
use virtmail_crds::contract::{WantedCondition, conditions_differ, merge_conditions};

/// Reason of a member's `Ready=True` when it is served without a problem.
pub const PUBLISHED: &str = "Published";

/// What a MailServer's status is made from after a successful reconcile.
#[derive(Debug, Clone)]
pub struct ServerObservation<'a> {
    /// The compiled directory.
    pub compiled: &'a Compiled,
    /// The directory as published.
    pub directory: DirectoryStatus,
    /// Parts of the spec the operator did not apply, with why.
    pub refused: &'a [String],
    /// Pods the StatefulSet is asked to run.
    pub wanted_replicas: i32,
    /// Pods it runs, and how many are ready (from its status).
    pub replicas: i32,
    /// Ready pods.
    pub ready_replicas: i32,
    /// The pods' label selector.
    pub selector: String,
}

/// The MailServer's status after a successful reconcile. Pure: conditions keep their
/// `lastTransitionTime` unless their status changes.
pub fn server_status(
    previous: &MailServerStatus,
    observed: &ServerObservation<'_>,
    generation: Option<i64>,
    now: &Time,
) -> MailServerStatus {
    let compiled = observed.compiled;
    let invalid = compiled
        .diagnostics
        .iter()
        .map(|d| &d.object)
        .collect::<BTreeSet<_>>()
        .len() as u32;
    let directory = &observed.directory;
    let (wanted, ready) = (observed.wanted_replicas, observed.ready_replicas);
    let mut conditions = vec![
        WantedCondition {
            type_: DIRECTORY_PUBLISHED,
            status: true,
            reason: "Published".into(),
            message: format!(
                "version {} in {} shards, {} bytes",
                directory.version, directory.shards, directory.bytes
            ),
        },
        if observed.refused.is_empty() {
            WantedCondition {
                type_: READY,
                status: true,
                reason: "Reconciled".into(),
                message: format!(
                    "{} objects served, {invalid} with problems",
                    compiled.members.len()
                ),
            }
        } else {
            WantedCondition {
                type_: READY,
                status: false,
                reason: "ParameterRefused".into(),
                message: observed.refused.join("; "),
            }
        },
        match (wanted, ready) {
            (0, _) => WantedCondition {
                type_: AVAILABLE,
                status: false,
                reason: "ScaledToZero".into(),
                message: "replicas is 0: no pod accepts mail".into(),
            },
            (wanted, ready) if ready >= wanted => WantedCondition {
                type_: AVAILABLE,
                status: true,
                reason: "PodsReady".into(),
                message: format!("{ready} of {wanted} pods ready"),
            },
            (wanted, ready) => WantedCondition {
                type_: AVAILABLE,
                status: false,
                reason: if ready == 0 {
                    "NoPodReady"
                } else {
                    "PodsNotReady"
                }
                .into(),
                message: format!("{ready} of {wanted} pods ready"),
            },
        },
        if compiled.ceded.is_empty() {
            WantedCondition {
                type_: DOMAIN_CONFLICT,
                status: false,
                reason: "NoConflict".into(),
                message: "no older MailServer selects the same domains".into(),
            }
        } else {
            WantedCondition {
                type_: DOMAIN_CONFLICT,
                status: true,
                reason: "DomainConflict".into(),
                message: format!(
                    "not served here, as older MailServers serve them: {}",
                    compiled
                        .ceded
                        .iter()
                        .map(|c| format!("{} (MailServer/{})", c.domain, c.served_by))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        },
    ];
    conditions.sort_by_key(|w| w.type_);
    MailServerStatus {
        observed_generation: generation,
        conditions: merge_conditions(&previous.conditions, &conditions, generation, now),
        domains: compiled.directory.domains.len() as u32,
        mailboxes: compiled.directory.mailboxes.len() as u32,
        aliases: compiled.directory.aliases.len() as u32,
        invalid,
        directory: Some(directory.clone()),
        ready_replicas: ready,
        replicas: observed.replicas,
        selector: Some(observed.selector.clone()),
    }
}

/// The MailServer's status after a failed reconcile: `Ready=False` with the error's category
/// as reason; everything else as it was (the directory and the pods keep serving).
pub fn failed_server_status(
    previous: &MailServerStatus,
    category: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> MailServerStatus {
    let ready = WantedCondition {
        type_: READY,
        status: false,
        reason: category.into(),
        message: message.into(),
    };
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .collect();
    conditions.extend(merge_conditions(
        &previous.conditions,
        &[ready],
        generation,
        now,
    ));
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    MailServerStatus {
        conditions,
        ..previous.clone()
    }
}

/// Whether a new server status shows anything the previous one does not.
pub fn server_status_differs(previous: &MailServerStatus, new: &MailServerStatus) -> bool {
    conditions_differ(&previous.conditions, &new.conditions)
        || MailServerStatus {
            conditions: previous.conditions.clone(),
            ..new.clone()
        } != *previous
}

/// `Ready` for a member object of a server's directory.
pub fn ready_for(compiled: &Compiled, object: &ObjectRef, server: &str) -> WantedCondition {
    match compiled.diagnostic(object) {
        None => WantedCondition {
            type_: READY,
            status: true,
            reason: PUBLISHED.into(),
            message: format!("in the directory of MailServer/{server}"),
        },
        Some(d) => WantedCondition {
            type_: READY,
            // A degraded domain still receives mail.
            status: d.effect == Effect::Degraded,
            reason: d.reason.as_str().into(),
            message: match d.effect {
                Effect::Deferring => format!("{} (mail to it is deferred until fixed)", d.message),
                Effect::Excluded => format!("{} (not in the directory)", d.message),
                Effect::Degraded => d.message.clone(),
            },
        },
    }
}

/// A status to apply to one object, and the Event its change is worth.
#[derive(Debug, Clone)]
pub struct StatusPatch {
    /// The `status` of the apply.
    pub status: serde_json::Value,
    /// Published after the status is applied.
    pub event: Option<Notice>,
}

/// An Event to publish about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Normal or Warning.
    pub type_: EventType,
    /// PascalCase reason.
    pub reason: String,
    /// What happened.
    pub note: String,
    /// What the operator was doing: `Compile` (members) or `Reconcile` (servers).
    pub action: &'static str,
}

impl Notice {
    fn to_event(&self) -> Event {
        Event {
            type_: self.type_,
            reason: self.reason.clone(),
            note: Some(self.note.clone()),
            action: self.action.into(),
            secondary: None,
        }
    }
}

/// The patch that brings one member's `Ready` condition (and extra status fields) to what is
/// wanted, if anything changes, with an Event for every change of state and every problem
/// (not for a new object becoming Ready as expected: the condition records that, and 100,000
/// Mailboxes created at once must not mean 100,000 Events).
pub fn member_patch(
    existing: &[Condition],
    generation: Option<i64>,
    wanted: WantedCondition,
    extra: serde_json::Value,
    extra_changed: bool,
    now: &Time,
) -> Option<StatusPatch> {
    let merged = merge_conditions(existing, std::slice::from_ref(&wanted), generation, now);
    if !extra_changed && !conditions_differ(existing, &merged) {
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
    let problem = !wanted.status || wanted.reason != PUBLISHED;
    let event = transition.then_some(Notice {
        type_: if problem {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: wanted.reason,
        note: wanted.message,
        action: "Compile",
    });
    Some(StatusPatch { status, event })
}

/// What one compile wants of its members' statuses.
#[derive(Debug)]
pub struct MemberStatuses<'a> {
    compiled: &'a Compiled,
    server_name: &'a str,
    now: Time,
    /// Mailboxes per domain, for the MailDomains' status (one pass, not one per domain; none
    /// when no domain's status is looked at).
    mailboxes_per_domain: std::sync::OnceLock<HashMap<&'a str, usize>>,
}

impl<'a> MemberStatuses<'a> {
    /// The statuses `compiled`, the directory of MailServer `server_name`, wants; `now` is the
    /// time of any condition that changes.
    pub fn new(compiled: &'a Compiled, server_name: &'a str, now: Time) -> Self {
        MemberStatuses {
            compiled,
            server_name,
            now,
            mailboxes_per_domain: std::sync::OnceLock::new(),
        }
    }

    fn mailboxes_per_domain(&self) -> &HashMap<&'a str, usize> {
        self.mailboxes_per_domain.get_or_init(|| {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for key in self.compiled.directory.mailboxes.keys() {
                if let Some((_, domain)) = key.rsplit_once('@') {
                    *counts.entry(domain).or_default() += 1;
                }
            }
            counts
        })
    }

    fn patch<K: Member>(
        &self,
        member: &ObjectRef,
        object: &K,
        extra: serde_json::Value,
        extra_changed: bool,
    ) -> Option<StatusPatch> {
        let wanted = ready_for(self.compiled, member, self.server_name);
        member_patch(
            object.conditions(),
            object.meta().generation,
            wanted,
            extra,
            extra_changed,
            &self.now,
        )
    }

    /// A Mailbox's patch: `Ready` and the values it is delivered with.
    pub fn mailbox(&self, member: &ObjectRef, mailbox: &Mailbox) -> Option<StatusPatch> {
        let directory = &self.compiled.directory;
        let base = &directory.settings.mailbox_base;
        let key = virtmail_crds::address::fold(&mailbox.spec.address);
        let entry = directory
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
        // Only the values there are: an absent one is left out of the apply, which removes
        // what an earlier apply of this field manager set.
        let extra = serde_json::to_value(&effective).unwrap_or_default();
        self.patch(member, mailbox, extra, changed)
    }

    /// A MailAlias's patch: `Ready` only.
    pub fn alias(&self, member: &ObjectRef, alias: &MailAlias) -> Option<StatusPatch> {
        self.patch(member, alias, json!({}), false)
    }

    /// A MailDomain's patch: `Ready`, its mailbox count and the server serving it.
    pub fn domain(&self, member: &ObjectRef, domain: &MailDomain) -> Option<StatusPatch> {
        let folded = virtmail_crds::address::fold(&domain.spec.domain);
        let count = self
            .mailboxes_per_domain()
            .get(folded.as_str())
            .copied()
            .unwrap_or(0);
        let extra_changed = domain
            .status
            .as_ref()
            .is_none_or(|s| s.mailboxes as usize != count || s.servers != [self.server_name]);
        let extra = json!({ "mailboxes": count, "servers": [self.server_name] });
        self.patch(member, domain, extra, extra_changed)
    }
}

/// Whether two Mailbox statuses show the same values besides their conditions.
fn same_effective_values(a: &MailboxStatus, b: &MailboxStatus) -> bool {
    a.path == b.path && (a.format, a.uid, a.gid, a.quota) == (b.format, b.uid, b.gid, b.quota)
}

/// The Events a server's new status is worth: a new directory version, and a domain conflict
/// that is new or changed.
pub fn server_events(
    previous: &MailServerStatus,
    new: &MailServerStatus,
    encoded: &Encoded,
) -> Vec<Notice> {
    let event = |type_, reason: &str, note| Notice {
        type_,
        reason: reason.into(),
        note,
        action: "Reconcile",
    };
    let mut events = Vec::new();
    let version = |s: &MailServerStatus| s.directory.as_ref().map(|d| d.version.clone());
    if version(previous) != version(new) {
        events.push(event(
            EventType::Normal,
            "DirectoryPublished",
            format!(
                "version {} ({} shards)",
                encoded.version,
                encoded.shards.len()
            ),
        ));
    }
    let conflict = |s: &MailServerStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == DOMAIN_CONFLICT)
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    if let Some((state, message)) = conflict(new)
        && state == "True"
        && conflict(previous) != Some((state, message.clone()))
    {
        events.push(event(EventType::Warning, "DomainConflict", message));
    }
    events
}

/// The server's observation of what was published and the pods that serve it.
fn observation<'a>(
    server: &MailServer,
    compiled: &'a Compiled,
    encoded: &Encoded,
    desired: &'a Desired,
    pods: k8s_openapi::api::apps::v1::StatefulSetStatus,
) -> ServerObservation<'a> {
    ServerObservation {
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
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

// The I/O: patches and Events, nothing decided here.

/// Server-side apply of an object's status.
async fn apply_status<K>(ctx: &Context, object: &K, status: serde_json::Value) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let body = json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Publish an Event about `object`; best effort (a lost Event must not fail a reconcile).
async fn publish_event<K: Resource<DynamicType = ()>>(ctx: &Context, object: &K, event: &Notice) {
    if let Err(e) = ctx
        .recorder
        .publish(&event.to_event(), &object.object_ref(&()))
        .await
    {
        warn!(error = %e, "cannot publish event");
    }
}

/// One member status patch, decided synchronously (cheap, no allocation for members whose
/// status is already right) and sent later: at 100,000 members only the few patches in flight
/// may hold a request future or an object.
enum MemberPatch {
    Mailbox(Arc<Mailbox>, StatusPatch),
    Alias(Arc<MailAlias>, StatusPatch),
    Domain(Arc<MailDomain>, StatusPatch),
}

impl MemberPatch {
    /// The patch one member needs, if any (none for a member no longer in the cache), read from
    /// the cache as it is now.
    fn of(
        ctx: &Context,
        namespace: &str,
        statuses: &MemberStatuses<'_>,
        member: &ObjectRef,
    ) -> Option<Self> {
        let name = &member.name;
        match member.kind {
            Kind::Mailbox => {
                let mailbox = ctx.mailboxes.get(namespace, name)?;
                let patch = statuses.mailbox(member, &mailbox)?;
                Some(MemberPatch::Mailbox(mailbox, patch))
            }
            Kind::MailAlias => {
                let alias = ctx.aliases.get(namespace, name)?;
                let patch = statuses.alias(member, &alias)?;
                Some(MemberPatch::Alias(alias, patch))
            }
            Kind::MailDomain => {
                let domain = ctx.domains.get(namespace, name)?;
                let patch = statuses.domain(member, &domain)?;
                Some(MemberPatch::Domain(domain, patch))
            }
            Kind::MailServer => None,
        }
    }

    async fn send(self, ctx: &Context) -> Result<()> {
        match self {
            MemberPatch::Mailbox(object, patch) => send_patch(ctx, object.as_ref(), patch).await,
            MemberPatch::Alias(object, patch) => send_patch(ctx, object.as_ref(), patch).await,
            MemberPatch::Domain(object, patch) => send_patch(ctx, object.as_ref(), patch).await,
        }
    }
}

/// Apply a status, then publish its Event.
async fn send_patch<K>(ctx: &Context, object: &K, patch: StatusPatch) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    apply_status(ctx, object, patch.status).await?;
    if let Some(event) = patch.event {
        publish_event(ctx, object, &event).await;
    }
    Ok(())
}

/// Members whose status may differ from what was last published: every member after a full
/// compile, the edited Mailboxes after in-place ones (added up until a task publishes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owed {
    /// Every member of the snapshot.
    All,
    /// These members only.
    Some(BTreeSet<ObjectRef>),
}

impl Owed {
    /// What is owed after a snapshot that changed `changed` (none: everything).
    pub(super) fn after(self, changed: Option<BTreeSet<ObjectRef>>) -> Owed {
        match (self, changed) {
            (Owed::Some(mut owed), Some(changed)) => {
                owed.extend(changed);
                Owed::Some(owed)
            }
            _ => Owed::All,
        }
    }
}

/// The status step for members: Ready on every Mailbox, MailAlias and MailDomain of the server
/// that is `owed` one, read from the caches as they are when each patch is decided. Stops early
/// (successfully) when the inputs change: a newer snapshot and its own task are on the way.
async fn publish_members(
    ctx: &Context,
    server: &MailServer,
    snapshot: &Snapshot,
    owed: &Owed,
) -> Result<()> {
    let namespace = server.namespace().unwrap_or_default();
    let server_name = server.name_any();
    let statuses = MemberStatuses::new(&snapshot.compiled, &server_name, now());
    let members: Box<dyn Iterator<Item = &ObjectRef> + Send> = match owed {
        Owed::All => Box::new(snapshot.compiled.members.iter()),
        Owed::Some(members) => Box::new(members.iter()),
    };
    let mut pending = members
        .take_while(|_| ctx.is_current(snapshot))
        .filter_map(|member| MemberPatch::of(ctx, &namespace, &statuses, member));
    // Futures are made as they are sent: 16 in flight, never one per member.
    let mut in_flight = stream::FuturesUnordered::new();
    let mut first_error = None;
    loop {
        while in_flight.len() < 16 {
            match pending.next() {
                Some(patch) => in_flight.push(patch.send(ctx)),
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

/// The status step for the server itself: computed by [`server_status`] from what was
/// published and the StatefulSet's pods, applied only when it shows something new.
pub(super) async fn publish_server(
    ctx: &Context,
    server: &MailServer,
    compiled: &Compiled,
    encoded: &Encoded,
    desired: &Desired,
) -> Result<()> {
    let sets: Api<StatefulSet> =
        Api::namespaced(ctx.client.clone(), &server.namespace().unwrap_or_default());
    let pods = sets
        .get_opt(&server.name_any())
        .await?
        .and_then(|s| s.status)
        .unwrap_or_default();
    let observed = observation(server, compiled, encoded, desired, pods);
    let previous = server.status.clone().unwrap_or_default();
    let new_status = server_status(&previous, &observed, server.meta().generation, &now());
    if !server_status_differs(&previous, &new_status) {
        return Ok(());
    }
    apply_status(ctx, server, serde_json::to_value(&new_status)?).await?;
    for event in server_events(&previous, &new_status, encoded) {
        publish_event(ctx, server, &event).await;
    }
    Ok(())
}

/// A failed reconcile shows on the MailServer: `Ready=False` with the error's category as
/// reason, and a Warning Event. Best effort: the API may be what failed.
pub(super) async fn report_failure(ctx: &Context, server: &MailServer, error: &Error) {
    let previous = server.status.clone().unwrap_or_default();
    let message = error.to_string();
    let failed = failed_server_status(
        &previous,
        error.category(),
        &message,
        server.meta().generation,
        &now(),
    );
    if server_status_differs(&previous, &failed) {
        let applied = match serde_json::to_value(&failed) {
            Ok(status) => apply_status(ctx, server, status).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = applied {
            warn!(error = %e, "cannot show the reconcile failure on the MailServer");
        }
    }
    let event = Notice {
        type_: EventType::Warning,
        reason: error.category().into(),
        note: message,
        action: "Reconcile",
    };
    publish_event(ctx, server, &event).await;
}

/// A members' status task and the snapshot it works from.
pub(super) type StatusTask = (Arc<Snapshot>, tokio::task::JoinHandle<()>);

/// The members' `Ready` conditions, after the directory is published and apart from the
/// reconcile: mail depends on the directory, not on 100,000 status patches, so those must not
/// hold back the next version. A task already working from this snapshot is left alone; one
/// from an older snapshot was stopped when the new one was compiled (every patch is an
/// idempotent apply, so stopping one halfway loses nothing: what it owed stays owed). Failures
/// are retried with backoff, then left to the next reconcile.
pub(super) fn spawn_member_status(
    server: &Arc<MailServer>,
    ctx: &Arc<Context>,
    snapshot: Arc<Snapshot>,
) {
    let key = server_key(server);
    let mut tasks = ctx.member_status.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((running, task)) = tasks.get(&key)
        && Arc::ptr_eq(running, &snapshot)
        && !task.is_finished()
    {
        return;
    }
    let Some((serial, owed)) = ctx.owed_statuses(&key) else {
        return;
    };
    let (server, task_ctx, task_snapshot) = (server.clone(), ctx.clone(), snapshot.clone());
    let task = tokio::spawn(async move {
        for attempt in 1..=3 {
            match publish_members(&task_ctx, &server, &task_snapshot, &owed).await {
                Ok(()) => {
                    if task_ctx.is_current(&task_snapshot) {
                        task_ctx.statuses_published(&server_key(&server), serial);
                    }
                    return;
                }
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

#[cfg(test)]
mod tests;
