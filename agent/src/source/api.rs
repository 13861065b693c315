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
use virtmail_crds::encoding::{self, Data, LABEL_SERVER};

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

/// The ConfigMaps seen so far. A shard's data is dropped once the served version holds it
/// decoded: a later version takes that part from the served one, and the watch sends the data
/// again if the shard changes.
#[derive(Debug, Default)]
struct Seen {
    head: Option<Data>,
    shards: BTreeMap<String, Data>,
    /// Objects of a re-list in progress (swapped in on `InitDone`).
    relist: Option<(Option<Data>, BTreeMap<String, Data>)>,
}

impl Seen {
    fn put(
        head_name: &str,
        target: (&mut Option<Data>, &mut BTreeMap<String, Data>),
        cm: ConfigMap,
    ) {
        let name = cm.name_any();
        let data = cm.data.unwrap_or_default();
        if name == head_name {
            *target.0 = Some(data);
        } else {
            target.1.insert(name, data);
        }
    }
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
                seen.relist = Some((None, BTreeMap::new()));
                false
            }
            Event::InitApply(cm) => {
                if let Some((head, shards)) = seen.relist.as_mut() {
                    Seen::put(&head_name, (head, shards), cm);
                }
                false
            }
            Event::InitDone => {
                if let Some((head, shards)) = seen.relist.take() {
                    seen.head = head;
                    seen.shards = shards;
                }
                true
            }
            Event::Apply(cm) => {
                Seen::put(&head_name, (&mut seen.head, &mut seen.shards), cm);
                true
            }
            Event::Delete(cm) => {
                let name = cm.name_any();
                if name == head_name {
                    // A deleted head is a glitch or a deleted server: keep serving.
                    seen.head = None;
                } else {
                    seen.shards.remove(&name);
                }
                true
            }
        };
        if !settled {
            continue;
        }
        let serving = publisher.current();
        let assembly = assemble(seen.head.as_ref(), &seen.shards, serving.as_deref());
        publisher.settle(&format!("ConfigMap {head_name}"), assembly);
        if let Some(serving) = publisher.current() {
            seen.shards
                .retain(|name, data| !serving.hashes.holds_shard(name, &encoding::data_hash(data)));
        }
    }
}
