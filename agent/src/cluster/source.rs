//! The cluster directory source: watches the directory ConfigMaps of one MailServer through the
//! API (no kubelet projection delay) and swaps in each complete, verified version.
//!
//! Fail static: when the API is unreachable, a shard is missing or a hash does not match, the
//! last good version keeps serving and [`SourceState`] says why; an empty directory is never
//! served after a glitch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};
use virtmail_crds::Directory;
use virtmail_crds::encoding::{self, Data, LABEL_SERVER};

use super::assemble::{Assembly, assemble};

/// What the source last saw, for `/metrics` and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// Version being served.
    pub serving: Option<String>,
    /// A newer version that cannot be served yet, and why.
    pub pending: Option<String>,
    /// Last watch error (API unreachable, RBAC), cleared by the next successful event.
    pub watch_error: Option<String>,
}

/// Shared, updated by the source.
#[derive(Debug, Default)]
pub struct SourceState(Mutex<SourceStatus>);

impl SourceState {
    /// A copy of the status.
    pub fn get(&self) -> SourceStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        let mut status = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let before = status.pending.clone();
        f(&mut status);
        // `/readyz` says only ready or not: why a newer version waits goes to the log, once per
        // change (the gauge virtmail_directory_pending is on /metrics).
        if status.pending != before
            && let Some(pending) = &status.pending
        {
            warn!("pending: {pending}");
        }
    }
}

/// The ConfigMaps seen so far.
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

/// Watch the directory ConfigMaps of `server` in `namespace` forever, calling `publish` with
/// every new complete version.
pub async fn run(
    client: Client,
    namespace: &str,
    server: &str,
    state: Arc<SourceState>,
    publish: impl Fn(Directory, &str),
) {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let head_name = encoding::head_name(server);
    let config = watcher::Config::default().labels(&format!("{LABEL_SERVER}={server}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen = Seen::default();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => {
                state.update(|s| s.watch_error = None);
                event
            }
            Err(error) => {
                warn!(%error, "directory watch failed; serving the last good version");
                state.update(|s| s.watch_error = Some(error.to_string()));
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
        let assembly = assemble(
            seen.head.as_ref(),
            &seen.shards,
            state.get().serving.as_deref(),
        );
        settle(
            &state,
            &format!("ConfigMap {head_name}"),
            assembly,
            &publish,
        );
    }
}

/// Act on one assembly attempt (both sources): publish a new version, or record in `state` why
/// the newest one cannot be served yet. `head` names where the head comes from, for people.
pub fn settle(
    state: &SourceState,
    head: &str,
    assembly: Assembly,
    publish: &impl Fn(Directory, &str),
) {
    match assembly {
        Assembly::Ready { directory, version } => {
            info!(%version, mailboxes = directory.mailboxes.len(), "directory version assembled");
            publish(*directory, &version);
            state.update(|s| {
                s.serving = Some(version);
                s.pending = None;
            });
        }
        Assembly::Unchanged => state.update(|s| s.pending = None),
        Assembly::NoHead => state.update(|s| s.pending = Some(format!("no {head}"))),
        Assembly::Waiting { version, missing } => state.update(|s| {
            s.pending = Some(format!(
                "version {version} waits for shards {}",
                missing.join(", ")
            ))
        }),
        Assembly::Invalid { version, error } => {
            warn!(?version, %error, "directory version refused; serving the last good version");
            state.update(|s| s.pending = Some(format!("version {version:?} refused: {error}")));
        }
    }
}
