//! Member caches: the MailDomains, Mailboxes and MailAliases the compiler reads, fed by their
//! watch streams, grouped by namespace and keyed by name.
//!
//! kube's reflector `Store` is one map over all namespaces whose key (`ObjectRef`) copies each
//! object's name, namespace, uid and resourceVersion. At 100,000 Mailboxes those keys and the
//! map's spare capacity are tens of MiB, and finding one namespace's objects scans them all.
//! Here a key is the name alone, inside its namespace's map.
//!
//! Semantics follow the reflector: a relist (`Init` … `InitDone`) is buffered and replaces the
//! namespace maps at once, so readers never see a half-listed cache, and the cache is ready
//! from the first `InitDone` on.
//!
//! Cached objects are trimmed first ([`trim`]): of 100,000 Mailboxes, only what the operator
//! reads stays in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::runtime::watcher::Event;
use virtmail_crds::{MailAlias, MailDomain, Mailbox};

use crate::reconcile::status::READY;

/// A member kind: its status conditions (the cache keeps only the operator's own, the status
/// step reads them).
pub trait Member: Resource + Clone {
    /// The status conditions (none without a status).
    fn conditions(&self) -> &[Condition];
    /// The status conditions, if there is a status.
    fn conditions_mut(&mut self) -> Option<&mut Vec<Condition>>;
}

/// Every member kind's status has `conditions`.
macro_rules! member_with_status_conditions {
    ($($kind:ty),*) => {$(
        impl Member for $kind {
            fn conditions(&self) -> &[Condition] {
                self.status.as_ref().map_or(&[], |s| &s.conditions)
            }
            fn conditions_mut(&mut self) -> Option<&mut Vec<Condition>> {
                self.status.as_mut().map(|s| &mut s.conditions)
            }
        }
    )*};
}

member_with_status_conditions!(Mailbox, MailAlias, MailDomain);

/// Drop what the operator never reads from a member object before it is cached.
/// - managedFields and annotations (kubectl's last-applied-configuration repeats the whole
///   spec) are most of an object's size;
/// - the resourceVersion is not read (status patches are applies, not updates; the watcher has
///   taken it before this runs), nor are finalizers, owner references or generateName;
/// - of the conditions only `Ready` is read (to keep its `lastTransitionTime` and skip patches
///   that change nothing); the agent's `Provisioned` is as large and never read here.
///
/// The uid stays: Events name their object by it, and `kubectl describe` finds them by it.
pub fn trim<K: Member>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
    meta.resource_version = None;
    meta.finalizers = None;
    meta.owner_references = None;
    meta.generate_name = None;
    meta.self_link = None;
    if let Some(conditions) = object.conditions_mut() {
        conditions.retain(|c| c.type_ == READY);
        conditions.shrink_to_fit();
    }
}

/// Objects per namespace, per name.
type Namespaces<K> = HashMap<String, HashMap<String, Arc<K>>>;

struct State<K> {
    current: Namespaces<K>,
    /// The relist under way, if any.
    relist: Option<Namespaces<K>>,
}

/// A cache of one kind of member object (cheap to clone: clones share it).
pub struct MemberCache<K> {
    state: Arc<RwLock<State<K>>>,
    ready: Arc<tokio::sync::watch::Sender<bool>>,
    /// Objects received by lists so far (all relists together): shows a long list progressing.
    listed: Arc<AtomicU64>,
}

impl<K> Clone for MemberCache<K> {
    fn clone(&self) -> Self {
        MemberCache {
            state: self.state.clone(),
            ready: self.ready.clone(),
            listed: self.listed.clone(),
        }
    }
}

impl<K> std::fmt::Debug for MemberCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberCache")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl<K> Default for MemberCache<K> {
    fn default() -> Self {
        MemberCache {
            state: Arc::new(RwLock::new(State {
                current: HashMap::new(),
                relist: None,
            })),
            ready: Arc::new(tokio::sync::watch::Sender::new(false)),
            listed: Arc::default(),
        }
    }
}

fn insert<K: Resource + Clone>(namespaces: &mut Namespaces<K>, object: &K) {
    let meta = object.meta();
    let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
        return; // members are namespaced and named; the API never sends one without
    };
    let objects = match namespaces.get_mut(namespace.as_str()) {
        Some(objects) => objects,
        None => namespaces.entry(namespace.clone()).or_default(),
    };
    objects.insert(name.clone(), Arc::new(object.clone()));
}

impl<K: Resource + Clone> MemberCache<K> {
    /// Apply one watch event (call it before the event goes on, as the reflector does, so
    /// whoever reacts to the event reads a cache that holds it).
    pub fn apply(&self, event: &Event<K>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Apply(object) => insert(&mut state.current, object),
            Event::Delete(object) => {
                let meta = object.meta();
                if let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name)
                    && let Some(objects) = state.current.get_mut(namespace.as_str())
                {
                    objects.remove(name.as_str());
                    if objects.is_empty() {
                        state.current.remove(namespace.as_str());
                    }
                }
            }
            Event::Init => state.relist = Some(HashMap::new()),
            Event::InitApply(object) => {
                insert(state.relist.get_or_insert_default(), object);
                self.listed.fetch_add(1, Ordering::Relaxed);
            }
            Event::InitDone => {
                // The old maps are dropped here, after the swap: never a moment with neither.
                let relisted = state.relist.take().unwrap_or_default();
                let _old = std::mem::replace(&mut state.current, relisted);
                drop(state);
                self.ready.send_replace(true);
            }
        }
    }
}

impl<K> MemberCache<K> {
    /// The objects of one namespace (shared with the cache, never copied).
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .current
            .get(namespace)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One object, as the cache holds it now.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.current.get(namespace)?.get(name).cloned()
    }

    /// Whether the first list has completed.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Objects received by lists so far.
    pub fn listed(&self) -> u64 {
        self.listed.load(Ordering::Relaxed)
    }

    /// Wait until the first list has completed, for as long as it progresses: false once no
    /// object has arrived for `stall` (a list of 100,000 objects takes longer than any fixed
    /// timeout that would also catch a list that cannot be made).
    pub async fn wait_ready(&self, stall: Duration) -> bool {
        let mut ready = self.ready.subscribe();
        loop {
            let listed = self.listed();
            match tokio::time::timeout(stall, ready.wait_for(|r| *r)).await {
                Ok(result) => return result.is_ok(),
                Err(_) if self.listed() != listed => continue,
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use virtmail_crds::{Mailbox, MailboxSpec};

    fn mailbox(namespace: &str, name: &str, address: &str) -> Mailbox {
        Mailbox {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: MailboxSpec {
                address: address.into(),
                ..MailboxSpec::default()
            },
            status: None,
        }
    }

    fn names(cache: &MemberCache<Mailbox>, namespace: &str) -> Vec<String> {
        let mut names: Vec<String> = cache
            .in_namespace(namespace)
            .iter()
            .map(|m| m.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        names
    }

    /// A cache holding one Mailbox per `(namespace, name, address)`.
    fn cache_of(mailboxes: &[(&str, &str, &str)]) -> MemberCache<Mailbox> {
        let cache = MemberCache::default();
        for (namespace, name, address) in mailboxes {
            cache.apply(&Event::Apply(mailbox(namespace, name, address)));
        }
        cache
    }

    #[test]
    fn objects_are_found_by_namespace_and_name() {
        let cache = cache_of(&[
            ("a", "m1", "one@a.test"),
            ("a", "m2", "two@a.test"),
            ("b", "m1", "one@b.test"),
        ]);
        assert_eq!(names(&cache, "a"), ["m1", "m2"]);
        assert_eq!(names(&cache, "b"), ["m1"]);
        assert!(names(&cache, "c").is_empty());
        assert_eq!(cache.get("b", "m1").unwrap().spec.address, "one@b.test");
        assert!(cache.get("b", "m2").is_none());
        // A modification replaces the object.
        cache.apply(&Event::Apply(mailbox("a", "m1", "uno@a.test")));
        assert_eq!(cache.get("a", "m1").unwrap().spec.address, "uno@a.test");
        assert_eq!(names(&cache, "a"), ["m1", "m2"]);
    }

    #[test]
    fn deletes_remove_only_their_object() {
        let cache = cache_of(&[("a", "m1", "one@a.test"), ("b", "m1", "one@b.test")]);
        cache.apply(&Event::Delete(mailbox("a", "m1", "one@a.test")));
        assert!(cache.get("a", "m1").is_none());
        assert!(names(&cache, "a").is_empty());
        assert_eq!(names(&cache, "b"), ["m1"]);
        // Deleting what is not cached changes nothing.
        cache.apply(&Event::Delete(mailbox("c", "m9", "x@c.test")));
        assert_eq!(names(&cache, "b"), ["m1"]);
    }

    #[test]
    fn a_relist_replaces_the_cache_at_once_and_makes_it_ready() {
        let cache = MemberCache::default();
        assert!(!cache.is_ready());
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(mailbox("a", "m1", "one@a.test")));
        // Not listed completely yet: not ready, nothing visible.
        assert!(!cache.is_ready());
        assert!(cache.get("a", "m1").is_none());
        cache.apply(&Event::InitDone);
        assert!(cache.is_ready());
        assert_eq!(names(&cache, "a"), ["m1"]);
        // A later relist that lost m1 (deleted while the watch was down) and found m2: readers
        // see the old cache until it is done, then only what the relist saw.
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(mailbox("a", "m2", "two@a.test")));
        assert_eq!(names(&cache, "a"), ["m1"]);
        cache.apply(&Event::InitDone);
        assert_eq!(names(&cache, "a"), ["m2"]);
        assert!(cache.is_ready());
    }

    #[test]
    fn trim_keeps_what_the_operator_reads_and_only_the_ready_condition() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
        use std::collections::BTreeMap;
        use virtmail_crds::MailboxStatus;
        let at = Time("2026-12-01T00:00:00Z".parse().unwrap());
        let condition = |type_: &str| Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: "R".into(),
            message: "m".into(),
            observed_generation: Some(3),
            last_transition_time: at.clone(),
        };
        let mut object = mailbox("a", "m1", "one@a.test");
        let meta = &mut object.metadata;
        meta.uid = Some("uid-1".into());
        meta.generation = Some(3);
        meta.creation_timestamp = Some(at.clone());
        meta.deletion_timestamp = Some(at.clone());
        meta.labels = Some(BTreeMap::from([("team".into(), "x".into())]));
        meta.annotations = Some(BTreeMap::from([("last-applied".into(), "{...}".into())]));
        meta.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        meta.resource_version = Some("42".into());
        meta.finalizers = Some(vec!["f".into()]);
        object.status = Some(MailboxStatus {
            observed_generation: Some(3),
            conditions: vec![condition("Provisioned"), condition(READY)],
            path: Some("/var/mail/a.test/one/".into()),
            ..Default::default()
        });
        let untouched_spec = object.spec.clone();
        trim(&mut object);
        let meta = &object.metadata;
        assert_eq!(meta.uid.as_deref(), Some("uid-1"));
        assert_eq!(meta.generation, Some(3));
        assert_eq!(meta.creation_timestamp, Some(at.clone()));
        assert_eq!(meta.deletion_timestamp, Some(at.clone()));
        assert_eq!(meta.labels.as_ref().unwrap()["team"], "x");
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref()),
            (Some("m1"), Some("a"))
        );
        assert!(meta.annotations.is_none() && meta.managed_fields.is_none());
        assert!(meta.resource_version.is_none() && meta.finalizers.is_none());
        assert_eq!(object.spec, untouched_spec);
        let status = object.status.unwrap();
        assert_eq!(status.conditions, [condition(READY)]);
        assert_eq!(status.conditions.capacity(), 1);
        assert_eq!(status.path.as_deref(), Some("/var/mail/a.test/one/"));
        assert_eq!(status.observed_generation, Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_ready_waits_while_the_list_progresses_and_gives_up_when_it_stalls() {
        let cache: MemberCache<Mailbox> = MemberCache::default();
        assert!(!cache.wait_ready(Duration::from_secs(30)).await);
        // A list that delivers an object every 20 s (under the 30 s stall limit) and completes
        // after 100 s is waited for.
        let writer = cache.clone();
        let lister = tokio::spawn(async move {
            writer.apply(&Event::Init);
            for i in 0..5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                writer.apply(&Event::InitApply(mailbox(
                    "a",
                    &format!("m{i}"),
                    "x@a.test",
                )));
            }
            writer.apply(&Event::InitDone);
        });
        let started = tokio::time::Instant::now();
        assert!(cache.wait_ready(Duration::from_secs(30)).await);
        assert!(started.elapsed() >= Duration::from_secs(100));
        assert_eq!(cache.listed(), 5);
        lister.await.unwrap();
        // Once ready, it stays ready (a relist under way does not hide the cache).
        cache.apply(&Event::Init);
        assert!(cache.wait_ready(Duration::from_millis(1)).await);
    }
}
