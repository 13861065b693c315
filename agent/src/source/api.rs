//! The cluster directory source: watches the directory ConfigMaps of one MailServer through the
//! API (no kubelet projection delay) and swaps in each complete, verified version.
//!
//! Fail static: when the API is unreachable, a shard is missing or a hash does not match, the
//! last good version keeps serving and the [`super::SourceStatus`] says why; an empty directory
//! is never served after a glitch.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::warn;
use virtmail_crds::encoding::{self, Data, LABEL_SERVER, ShardHashes};

use super::assemble::assemble;
use super::{DirectorySource, Publisher};

/// Where the directory comes from in cluster mode.
#[derive(Clone)]
pub struct ApiSource {
    /// The API (kubeconfig from the environment, or the pod's service account).
    pub client: Client,
    /// Namespace of the MailServer.
    pub namespace: String,
    /// Name of the MailServer.
    pub server: String,
}

impl std::fmt::Debug for ApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSource")
            .field("namespace", &self.namespace)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl DirectorySource for ApiSource {
    async fn run(self, publisher: Publisher, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = watch_configmaps(self.client, &self.namespace, &self.server, &publisher) => {}
            _ = crate::stopped(&mut stop) => {}
        }
    }
}

/// The ConfigMaps of one listing: the head, and each shard's data with its hash (taken once, as
/// it arrives). A shard's data is dropped once the served version holds it decoded: a later
/// version takes that part from the served one, and the watch sends the data again if the shard
/// changes.
#[derive(Debug, Default)]
struct Objects {
    head: Option<Data>,
    shards: BTreeMap<String, Data>,
    hashes: BTreeMap<String, String>,
}

impl Objects {
    fn put(&mut self, head_name: &str, cm: ConfigMap) {
        let name = cm.name_any();
        let data = cm.data.unwrap_or_default();
        if name == head_name {
            self.head = Some(data);
        } else {
            self.hashes.insert(name.clone(), encoding::data_hash(&data));
            self.shards.insert(name, data);
        }
    }

    fn remove_shard(&mut self, name: &str) {
        self.shards.remove(name);
        self.hashes.remove(name);
    }

    /// Drop the data of every shard `held` (the served version's shards) holds.
    fn drop_held(&mut self, held: &ShardHashes) {
        let hashes = &mut self.hashes;
        self.shards.retain(|name, _| {
            let is_held = hashes
                .get(name)
                .is_some_and(|hash| held.holds_shard(name, hash));
            if is_held {
                hashes.remove(name);
            }
            !is_held
        });
    }
}

/// The ConfigMaps seen so far, and those of a re-list in progress (swapped in on `InitDone`).
#[derive(Debug, Default)]
struct Seen {
    current: Objects,
    relist: Option<Objects>,
}

/// Watch the directory ConfigMaps of `server` in `namespace` forever, publishing every new
/// complete version.
async fn watch_configmaps(client: Client, namespace: &str, server: &str, publisher: &Publisher) {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let head_name = encoding::head_name(server);
    let config = watcher::Config::default().labels(&format!("{LABEL_SERVER}={server}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen = Seen::default();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => {
                publisher.source_error(None);
                event
            }
            Err(error) => {
                warn!(%error, "directory watch failed; serving the last good version");
                publisher.source_error(Some(error.to_string()));
                continue;
            }
        };
        let settled = match event {
            Event::Init => {
                seen.relist = Some(Objects::default());
                false
            }
            Event::InitApply(cm) => {
                if let Some(relist) = seen.relist.as_mut() {
                    relist.put(&head_name, cm);
                }
                false
            }
            Event::InitDone => {
                if let Some(relist) = seen.relist.take() {
                    seen.current = relist;
                }
                true
            }
            Event::Apply(cm) => {
                seen.current.put(&head_name, cm);
                true
            }
            Event::Delete(cm) => {
                let name = cm.name_any();
                if name == head_name {
                    // A deleted head is a glitch or a deleted server: keep serving.
                    seen.current.head = None;
                } else {
                    seen.current.remove_shard(&name);
                }
                true
            }
        };
        if !settled {
            continue;
        }
        let current = &mut seen.current;
        let serving = publisher.current();
        let assembly = assemble(current.head.as_ref(), &current.shards, serving.as_deref());
        publisher.settle(&format!("ConfigMap {head_name}"), assembly);
        if let Some(serving) = publisher.current() {
            current.drop_held(&serving.hashes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(name: &str, data: &Data) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.data = Some(data.clone());
        cm
    }

    #[test]
    fn the_data_of_shards_the_served_version_holds_is_dropped_and_only_theirs() {
        let encoded = encoding::encode(&virtmail_crds::Directory::synthetic(20_000));
        let shards: BTreeMap<String, Data> = encoded
            .shards
            .iter()
            .map(|s| (s.name.clone(), (*s.data).clone()))
            .collect();
        let held = encoding::decode_reusing(&encoded.head, |n| shards.get(n), None)
            .expect("decode")
            .hashes;
        let mut objects = Objects::default();
        objects.put(
            "mail-directory",
            config_map("mail-directory", &encoded.head),
        );
        for (name, data) in &shards {
            objects.put("mail-directory", config_map(name, data));
        }
        // A newer content of the first shard, not yet named by a head.
        let (first, data) = shards.iter().next().expect("a shard");
        let mut newer = data.clone();
        newer.insert("aliases.jsonl".into(), String::new());
        objects.put("mail-directory", config_map(first, &newer));
        objects.drop_held(&held);
        assert_eq!(objects.shards.keys().collect::<Vec<_>>(), [first]);
        assert_eq!(objects.hashes.keys().collect::<Vec<_>>(), [first]);
        assert!(objects.head.is_some());
    }
}
