//! The wiring around the reconcile: the watches and caches that trigger it and feed it, and
//! the controller that runs it ([`run`]).
//!
//! MailServer is the root; MailDomain, Mailbox and MailAlias changes are mapped to every server
//! of their namespace (the compiler applies each server's selector), through shared member
//! caches (see [`crate::cache`]) so a reconcile never lists 100,000 mailboxes from the API.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef as KubeRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use virtmail_crds::{MailAlias, MailDomain, MailServer, Mailbox};

use crate::build::BuildConfig;
use crate::cache::{Member, MemberCache};
use crate::input_changes::{Change, InputChanges};
use crate::metrics::Metrics;
use crate::owned::OwnedVersions;
use crate::reconcile::{Context, MemberCaches, WatchedState, error_policy, reconcile, servers_of};

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

/// A Mailbox's change (created, edited or deleted), which the reconcile may apply in place.
fn mailbox_change(mailbox: &Mailbox) -> Change {
    Change::Mailbox(mailbox.name_any())
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
pub fn compiler_input_changes<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    changes: Arc<InputChanges>,
    classify: fn(&K) -> Change,
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
            let changed: Vec<(Option<String>, Change)> = match event {
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
                        vec![(o.meta().namespace.clone(), classify(&o))]
                    }
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&uid_key(&o));
                    vec![(o.meta().namespace.clone(), classify(&o))]
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
                        .map(|index| (namespaces[index as usize].clone(), Change::Other))
                        .collect()
                }
                Err(e) => return stream::iter(vec![Err(e)]),
            };
            let triggers: Vec<_> = changed
                .iter()
                .map(|(namespace, _)| Ok(trigger(namespace.clone())))
                .collect();
            if !changed.is_empty() {
                changes.record(changed);
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
    let caches = MemberCaches::default();
    let domain_stream = member_changes(&client, ns, &caches.domains);
    let mailbox_stream = member_changes(&client, ns, &caches.mailboxes);
    let alias_stream = member_changes(&client, ns, &caches.aliases);
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
    let input_changes = Arc::new(InputChanges::default());
    let context = Arc::new(Context::new(
        client.clone(),
        options.config,
        caches,
        servers,
        metrics.clone(),
        options.instance,
        WatchedState {
            owned: owned.versions.clone(),
            input_changes: input_changes.clone(),
            directory_write_rate: options.directory_write_rate,
        },
    ));
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
            compiler_input_changes(domain_stream, input_changes.clone(), |_| Change::Other),
            move |o: PartialObjectMeta<MailDomain>| servers_in(&s1, o.namespace()),
        )
        .watches_stream(
            compiler_input_changes(mailbox_stream, input_changes.clone(), mailbox_change),
            move |o: PartialObjectMeta<Mailbox>| servers_in(&s2, o.namespace()),
        )
        .watches_stream(
            compiler_input_changes(alias_stream, input_changes, |alias| {
                Change::Alias(alias.name_any())
            }),
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
    use crate::fixtures::{mailbox, server};
    use crate::reconcile::server_key;

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
        let changes = Arc::new(InputChanges::default());
        let triggers = futures::executor::block_on(
            compiler_input_changes(
                stream::iter(events.into_iter().map(Ok)),
                changes.clone(),
                mailbox_change,
            )
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
        (namespaces, changes.epoch())
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
