//! What the operator knows of the objects it owns: the resourceVersion each one has now (from the
//! owned-object watches) and the content and resourceVersion of its own last write.
//!
//! Two uses, both to keep a Mailbox edit from costing a round trip per owned object:
//! - an apply whose content equals the last write, onto an object still at the version that
//!   write produced, is skipped (a hand edit or a delete changes the version, and the next
//!   apply repairs it);
//! - a watch event that only reports the operator's own write does not trigger a reconcile
//!   (every other change still does: drift is repaired).
//!
//! The watch event of a write often arrives before the write's answer, which carries the
//! version to match it by. So a write is announced before it is sent ([`OwnedVersions::writing`]):
//! events of that object arriving meanwhile are held back, and the answer settles them
//! ([`OwnedVersions::wrote`]): an event of the version the write produced was the write itself;
//! any other version was another change, and the writer is told to look again.
//!
//! Knowledge is never required for correctness: an unknown object is applied, an unknown event
//! triggers.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::watcher;

/// An owned object: kind, namespace, name.
pub type OwnedKey = (Cow<'static, str>, String, String);

/// A write announced and not yet answered longer than this is no longer waited for: its events
/// trigger again (a reconcile dropped mid-write must not silence an object for good).
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(60);

/// A write sent and not yet answered, with the versions its object's watch reported meanwhile.
#[derive(Debug)]
struct InFlight {
    since: Instant,
    seen: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    /// resourceVersion seen last on the watch.
    observed: HashMap<OwnedKey, String>,
    /// (content hash, resourceVersion returned) of the operator's last write.
    written: HashMap<OwnedKey, (String, String)>,
    /// Kinds being relisted, with the keys listed so far.
    relisting: HashMap<Cow<'static, str>, HashSet<OwnedKey>>,
    /// The operator's writes sent and not yet answered.
    in_flight: HashMap<OwnedKey, InFlight>,
}

/// See the module documentation. Shared by the owned-object watches and the reconciles.
#[derive(Debug, Default)]
pub struct OwnedVersions {
    state: Mutex<State>,
}

/// The key of the object of kind `K` named `name` in `namespace`.
pub fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> OwnedKey {
    (K::kind(&()), namespace.to_string(), name.to_string())
}

fn key_of<K: Resource<DynamicType = ()>>(object: &K) -> OwnedKey {
    let meta = object.meta();
    key::<K>(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

impl OwnedVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether writing content `hash` to `key` would change nothing: the last write had this
    /// content and the object is still at the version it produced. `current` is the version
    /// just read from the apiserver, if the caller has one; otherwise the watch's is used.
    pub fn unchanged(&self, key: &OwnedKey, hash: &str, current: Option<&str>) -> bool {
        let state = self.lock();
        let Some((written_hash, written_version)) = state.written.get(key) else {
            return false;
        };
        let current = current.or_else(|| state.observed.get(key).map(String::as_str));
        written_hash == hash && current == Some(written_version.as_str())
    }

    /// Whether the watch has seen the object (and not its deletion).
    pub fn observed(&self, key: &OwnedKey) -> bool {
        self.lock().observed.contains_key(key)
    }

    /// Whether the object is there as far as the operator knows: the watch has seen it or the
    /// operator wrote it, and the watch has not seen it deleted since. (A guess for choosing
    /// between replacing and creating it; the apiserver has the last word.)
    pub fn exists(&self, key: &OwnedKey) -> bool {
        let state = self.lock();
        state.observed.contains_key(key) || state.written.contains_key(key)
    }

    /// Announce a write of `key` about to be sent: until it is answered ([`Self::wrote`]) or
    /// given up ([`Self::failed`]), the object's watch events are held back.
    pub fn writing(&self, key: &OwnedKey) {
        self.lock().in_flight.insert(
            key.clone(),
            InFlight {
                since: Instant::now(),
                seen: Vec::new(),
            },
        );
    }

    /// Record the operator's write of content `hash`, which produced `version`. Returns whether
    /// the watch reported another version of the object while the write was in flight: a change
    /// by someone else (or an older event), which the writer must look at again, as its event
    /// was held back.
    #[must_use = "a change seen during the write was held back: look again"]
    pub fn wrote(&self, key: OwnedKey, hash: String, version: String) -> bool {
        let mut state = self.lock();
        let other_change = state
            .in_flight
            .remove(&key)
            .is_some_and(|flight| flight.seen.iter().any(|seen| *seen != version));
        state.written.insert(key, (hash, version));
        other_change
    }

    /// Record that the object, read at `version`, holds content `hash` exactly as the operator
    /// writes it: an apply of that content is skipped while the object stays at that version,
    /// as after the operator's own write.
    pub fn holds(&self, key: OwnedKey, hash: String, version: String) {
        self.lock().written.insert(key, (hash, version));
    }

    /// A write announced with [`Self::writing`] failed: events of the object trigger again. (The
    /// failed reconcile is retried, so what was held back meanwhile is looked at then.)
    pub fn failed(&self, key: &OwnedKey) {
        self.lock().in_flight.remove(key);
    }

    /// Forget an object the operator deleted.
    pub fn forget(&self, key: &OwnedKey) {
        let mut state = self.lock();
        state.written.remove(key);
        state.observed.remove(key);
    }

    /// Take in one event of an owned-object watch; returns the objects whose change should
    /// trigger their owner's reconcile (all but the operator's own writes).
    pub fn observe<K>(&self, event: watcher::Event<K>) -> Vec<K>
    where
        K: Resource<DynamicType = ()>,
    {
        let kind = K::kind(&());
        let mut state = self.lock();
        match event {
            watcher::Event::Init => {
                state.relisting.insert(kind, HashSet::new());
                Vec::new()
            }
            watcher::Event::InitDone => {
                // Objects not relisted are gone: their next apply must not be skipped.
                if let Some(listed) = state.relisting.remove(&kind) {
                    state
                        .observed
                        .retain(|key, _| key.0 != kind || listed.contains(key));
                }
                Vec::new()
            }
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                let key = key_of(&object);
                let version = object.meta().resource_version.clone().unwrap_or_default();
                let own_write = state
                    .written
                    .get(&key)
                    .is_some_and(|(_, written)| *written == version);
                if let Some(listed) = state.relisting.get_mut(&kind) {
                    listed.insert(key.clone());
                }
                let held_back = match state.in_flight.get_mut(&key) {
                    Some(flight) if flight.since.elapsed() < IN_FLIGHT_LIMIT => {
                        flight.seen.push(version.clone());
                        true
                    }
                    _ => false,
                };
                state.observed.insert(key, version);
                if own_write || held_back {
                    Vec::new()
                } else {
                    vec![object]
                }
            }
            watcher::Event::Delete(object) => {
                let key = key_of(&object);
                state.observed.remove(&key);
                state.written.remove(&key);
                vec![object]
            }
        }
    }
}

/// A content hash of an object as it would be applied.
pub fn content_hash<T: serde::Serialize>(object: &T) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn config_map(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn key(name: &str) -> OwnedKey {
        super::key::<ConfigMap>("ns", name)
    }

    #[test]
    fn an_apply_is_skipped_only_while_the_object_is_at_our_last_write() {
        let owned = OwnedVersions::default();
        assert!(!owned.unchanged(&key("a"), "h1", None), "never written");
        let _ = owned.wrote(key("a"), "h1".into(), "5".into());
        owned.observe(watcher::Event::Apply(config_map("a", "5")));
        assert!(owned.unchanged(&key("a"), "h1", None));
        assert!(!owned.unchanged(&key("a"), "h2", None), "new content");
        // A hand edit moves the version: the next apply repairs it.
        owned.observe(watcher::Event::Apply(config_map("a", "6")));
        assert!(!owned.unchanged(&key("a"), "h1", None));
        // A version read by the caller wins over the watch's.
        assert!(owned.unchanged(&key("a"), "h1", Some("5")));
    }

    #[test]
    fn own_writes_do_not_trigger_but_edits_and_deletes_do() {
        let owned = OwnedVersions::default();
        let _ = owned.wrote(key("a"), "h1".into(), "5".into());
        assert!(
            owned
                .observe(watcher::Event::Apply(config_map("a", "5")))
                .is_empty()
        );
        assert_eq!(
            owned
                .observe(watcher::Event::Apply(config_map("a", "6")))
                .len(),
            1
        );
        assert_eq!(
            owned
                .observe(watcher::Event::Delete(config_map("a", "7")))
                .len(),
            1
        );
        assert!(
            !owned.unchanged(&key("a"), "h1", None),
            "a deleted object is applied again"
        );
    }

    #[test]
    fn the_event_of_a_write_arriving_before_its_answer_does_not_trigger() {
        let owned = OwnedVersions::default();
        let _ = owned.wrote(key("a"), "h1".into(), "5".into());
        owned.writing(&key("a"));
        assert!(
            owned
                .observe(watcher::Event::Apply(config_map("a", "6")))
                .is_empty(),
            "held back while the write is in flight"
        );
        assert!(
            !owned.wrote(key("a"), "h2".into(), "6".into()),
            "the event was the write itself"
        );
        assert!(owned.unchanged(&key("a"), "h2", None));
        assert_eq!(
            owned
                .observe(watcher::Event::Apply(config_map("a", "7")))
                .len(),
            1,
            "once answered, another change triggers again"
        );
    }

    #[test]
    fn another_change_seen_during_a_write_asks_to_look_again() {
        let owned = OwnedVersions::default();
        owned.writing(&key("a"));
        assert!(
            owned
                .observe(watcher::Event::Apply(config_map("a", "6")))
                .is_empty()
        );
        assert!(
            owned
                .observe(watcher::Event::Apply(config_map("a", "7")))
                .is_empty()
        );
        assert!(
            owned.wrote(key("a"), "h".into(), "6".into()),
            "version 7 was someone else's change"
        );
        assert!(
            !owned.unchanged(&key("a"), "h", None),
            "the object is no longer at our write"
        );
        // Deletions are never held back.
        owned.writing(&key("b"));
        assert_eq!(
            owned
                .observe(watcher::Event::Delete(config_map("b", "8")))
                .len(),
            1
        );
    }

    #[test]
    fn a_failed_write_holds_nothing_back_after_it() {
        let owned = OwnedVersions::default();
        owned.writing(&key("a"));
        owned.failed(&key("a"));
        assert_eq!(
            owned
                .observe(watcher::Event::Apply(config_map("a", "6")))
                .len(),
            1
        );
    }

    #[test]
    fn objects_missing_from_a_relist_are_applied_again() {
        let owned = OwnedVersions::default();
        for name in ["a", "b"] {
            let _ = owned.wrote(key(name), "h".into(), "5".into());
            owned.observe(watcher::Event::Apply(config_map(name, "5")));
        }
        owned.observe::<ConfigMap>(watcher::Event::Init);
        owned.observe(watcher::Event::InitApply(config_map("a", "5")));
        owned.observe::<ConfigMap>(watcher::Event::InitDone);
        assert!(owned.unchanged(&key("a"), "h", None));
        assert!(!owned.unchanged(&key("b"), "h", None), "b was deleted");
    }

    #[test]
    fn forgotten_objects_are_applied_again() {
        let owned = OwnedVersions::default();
        let _ = owned.wrote(key("a"), "h".into(), "5".into());
        owned.observe(watcher::Event::Apply(config_map("a", "5")));
        owned.forget(&key("a"));
        assert!(!owned.unchanged(&key("a"), "h", None));
    }

    #[test]
    fn content_hash_follows_content() {
        assert_eq!(
            content_hash(&config_map("a", "1")),
            content_hash(&config_map("a", "1"))
        );
        assert_ne!(
            content_hash(&config_map("a", "1")),
            content_hash(&config_map("b", "1"))
        );
    }

    #[test]
    fn an_object_exists_once_seen_or_written_until_its_deletion_is_seen() {
        let owned = OwnedVersions::default();
        assert!(!owned.exists(&key("a")));
        let _ = owned.wrote(key("a"), "h1".into(), "5".into());
        assert!(owned.exists(&key("a")), "written by the operator");
        owned.observe(watcher::Event::Delete(config_map("a", "5")));
        assert!(!owned.exists(&key("a")), "deleted by hand");
        assert!(!owned.unchanged(&key("a"), "h1", None));
        owned.observe(watcher::Event::Apply(config_map("b", "2")));
        assert!(owned.exists(&key("b")), "seen by the watch");
    }
}
