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
//! Knowledge is never required for correctness: an unknown object is applied, an unknown event
//! triggers.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::Resource;
use kube::runtime::watcher;

/// An owned object: kind, namespace, name.
pub type OwnedKey = (Cow<'static, str>, String, String);

#[derive(Debug, Default)]
struct State {
    /// resourceVersion seen last on the watch.
    observed: HashMap<OwnedKey, String>,
    /// (content hash, resourceVersion returned) of the operator's last write.
    written: HashMap<OwnedKey, (String, String)>,
    /// Kinds being relisted, with the keys listed so far.
    relisting: HashMap<Cow<'static, str>, HashSet<OwnedKey>>,
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

    /// Record the operator's write of content `hash`, which produced `version`.
    pub fn wrote(&self, key: OwnedKey, hash: String, version: String) {
        self.lock().written.insert(key, (hash, version));
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
                state.observed.insert(key, version);
                if own_write { Vec::new() } else { vec![object] }
            }
            watcher::Event::Delete(object) => {
                state.observed.remove(&key_of(&object));
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
        owned.wrote(key("a"), "h1".into(), "5".into());
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
        owned.wrote(key("a"), "h1".into(), "5".into());
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
    fn objects_missing_from_a_relist_are_applied_again() {
        let owned = OwnedVersions::default();
        for name in ["a", "b"] {
            owned.wrote(key(name), "h".into(), "5".into());
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
        owned.wrote(key("a"), "h".into(), "5".into());
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
}
