//! Where the directory comes from, behind one trait.
//!
//! A [`DirectorySource`] produces directory versions and hands each complete one to its
//! [`Publisher`], which swaps it into the [`Holder`] every server reads from. The sources:
//! [`files::FileSource`] (manifests under `--resources`, polled and compiled),
//! [`api::ApiSource`] (the directory ConfigMaps, watched through the API) and
//! [`mounted::MountedSource`] (the same ConfigMaps as a projected volume). Nothing else produces
//! or swaps a directory; consumers of new versions (provisioning) subscribe to the holder.
//!
//! Every reader takes one `Arc<Loaded>` snapshot and answers from it alone, so a swap is atomic:
//! no lookup or transaction ever sees parts of two directories.
//!
//! # Security
//!
//! A directory is input, not authority: in a pod it comes from ConfigMaps that anyone allowed to
//! write ConfigMaps in the namespace can edit. The hashes in the head make a version complete
//! and consistent, not trusted. What bounds a forged entry lies elsewhere: the uid floor from the
//! agent's own arguments (the directory cannot lower it), the mailbox path rule that delivery and
//! provisioning apply again, and containment below the mailbox base (`crate::fs`). A version that
//! does not decode or verify is never served; the previous one keeps serving.

pub mod api;
pub mod assemble;
pub mod files;
pub mod metrics;
pub mod mounted;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tracing::{info, warn};
use virtmail_crds::Directory;
use virtmail_crds::encoding::{self, Decoded, ShardHashes};

use assemble::Assembly;
use metrics::SourceMetrics;

/// Produces directory versions.
pub trait DirectorySource: Send + 'static {
    /// Whether the source follows versions published elsewhere (ConfigMaps), so a newer version
    /// can wait for its shards and the source itself can be unreachable; `/metrics` then reports
    /// both. A source that compiles its own versions has neither.
    const FOLLOWS_PUBLISHED_VERSIONS: bool = true;

    /// Work done before the servers listen (the file source loads once, so the first client
    /// already finds the directory). Default: nothing.
    fn prepare(&mut self, _publisher: &Publisher) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Publish every new version through `publisher` until `stop` turns true.
    fn run(
        self,
        publisher: Publisher,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;
}

/// One loaded directory.
#[derive(Debug)]
pub struct Loaded {
    /// The directory.
    pub directory: Arc<Directory>,
    /// Its content version (as published in ConfigMaps).
    pub version: String,
    /// The hashes of the shards it was decoded from: the next version takes the parts of those
    /// that did not change.
    pub hashes: ShardHashes,
    /// When it was swapped in (Unix seconds).
    pub loaded_unix: u64,
}

impl Loaded {
    /// A directory loaded now.
    pub fn new(directory: impl Into<Arc<Directory>>, version: String, hashes: ShardHashes) -> Self {
        Loaded {
            directory: directory.into(),
            version,
            hashes,
            loaded_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// The current directory, swapped atomically; `None` until the first successful load.
#[derive(Debug)]
pub struct Holder {
    /// Read by every lookup and transaction: a lock-free load.
    current: ArcSwapOption<Loaded>,
    /// Wakes the consumers of new versions (provisioning).
    versions: watch::Sender<Option<Arc<Loaded>>>,
}

impl Default for Holder {
    fn default() -> Self {
        Holder {
            current: ArcSwapOption::empty(),
            versions: watch::Sender::new(None),
        }
    }
}

impl Holder {
    /// The current snapshot.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    /// Every version swapped in from now on (the current one counts as seen).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Loaded>>> {
        self.versions.subscribe()
    }

    /// Replace the directory; its version is computed from its content.
    pub fn swap(&self, directory: Directory) -> Arc<Loaded> {
        let version = encoding::version(&directory);
        self.swap_with_version(directory, version, ShardHashes::default())
    }

    /// Replace the directory with one whose version is known (as published in ConfigMaps),
    /// decoded from shards with `hashes`.
    pub fn swap_with_version(
        &self,
        directory: impl Into<Arc<Directory>>,
        version: String,
        hashes: ShardHashes,
    ) -> Arc<Loaded> {
        let loaded = Arc::new(Loaded::new(directory, version, hashes));
        self.current.store(Some(loaded.clone()));
        self.versions.send_replace(Some(loaded.clone()));
        loaded
    }
}

/// What a source following published versions last saw, for `/metrics` and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// Version being served.
    pub serving: Option<String>,
    /// A newer version that cannot be served yet, and why.
    pub pending: Option<String>,
    /// Last error reading the source (API unreachable, RBAC, volume unreadable), cleared by the
    /// next successful read.
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

    fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
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

/// A source's way into the [`Holder`]: swaps versions in, counts loads, records what waits.
#[derive(Debug, Clone)]
pub struct Publisher {
    holder: Arc<Holder>,
    state: Arc<SourceState>,
    metrics: SourceMetrics,
    /// `--mailbox-base`: overrides every version's `mailboxBase` (running outside a pod).
    mailbox_base: Option<PathBuf>,
}

impl Publisher {
    /// A publisher into `holder`, counting into `metrics`.
    pub fn new(holder: Arc<Holder>, metrics: SourceMetrics, mailbox_base: Option<PathBuf>) -> Self {
        Publisher {
            holder,
            state: metrics.state(),
            metrics,
            mailbox_base,
        }
    }

    /// What the source last saw.
    pub fn status(&self) -> SourceStatus {
        self.state.get()
    }

    /// The version being served.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.holder.current()
    }

    /// Swap in a directory (with `diagnostics` problems logged by the source), its version
    /// computed from the content after the `mailboxBase` override.
    pub fn publish(&self, directory: Directory, diagnostics: usize) -> Arc<Loaded> {
        self.swap_in(directory, None, ShardHashes::default(), diagnostics, None)
    }

    /// Swap in a published version decoded from its shards.
    pub fn publish_decoded(&self, decoded: Decoded, version: String) -> Arc<Loaded> {
        let shards = Some((decoded.decoded, decoded.reused));
        self.swap_in(decoded.directory, Some(version), decoded.hashes, 0, shards)
    }

    fn swap_in(
        &self,
        mut directory: Directory,
        version: Option<String>,
        hashes: ShardHashes,
        diagnostics: usize,
        shards: Option<(usize, usize)>,
    ) -> Arc<Loaded> {
        if let Some(base) = &self.mailbox_base {
            directory.settings.mailbox_base = base.display().to_string();
        }
        let previous = self.holder.current().map(|l| l.version.clone());
        let loaded = match version {
            Some(version) => self.holder.swap_with_version(directory, version, hashes),
            None => self.holder.swap(directory),
        };
        self.metrics.reload_ok(diagnostics);
        if previous.as_deref() != Some(loaded.version.as_str()) {
            let d = &loaded.directory;
            let (shards_decoded, shards_reused) = shards.unzip();
            info!(
                version = %loaded.version,
                server = %d.settings.server,
                domains = d.domains.len(),
                mailboxes = d.mailboxes.len(),
                aliases = d.aliases.len(),
                diagnostics,
                shards_decoded,
                shards_reused,
                "directory loaded"
            );
        }
        loaded
    }

    /// A load of `what` that failed; the previous directory keeps serving.
    pub fn failed(&self, what: &str, error: &str) {
        self.metrics.reload_failed();
        let kept = self.holder.current().map(|l| l.version.clone());
        tracing::error!(
            kept = kept.as_deref().unwrap_or("none"),
            "cannot load {what}, keeping the previous directory: {error}"
        );
    }

    /// The source could (`None`) or could not be read.
    pub fn source_error(&self, error: Option<String>) {
        self.state.update(|s| s.watch_error = error);
    }

    /// Act on one assembly attempt of a published version: swap in a new version, or record why
    /// the newest one cannot be served yet. `head` names where the head comes from, for people.
    pub fn settle(&self, head: &str, assembly: Assembly) {
        match assembly {
            Assembly::Ready { decoded, version } => {
                self.publish_decoded(*decoded, version.clone());
                self.state.update(|s| {
                    s.serving = Some(version);
                    s.pending = None;
                });
            }
            Assembly::Unchanged => self.state.update(|s| s.pending = None),
            Assembly::NoHead => self
                .state
                .update(|s| s.pending = Some(format!("no {head}"))),
            Assembly::Waiting { version, missing } => self.state.update(|s| {
                s.pending = Some(format!(
                    "version {version} waits for shards {}",
                    missing.join(", ")
                ))
            }),
            Assembly::Invalid { version, error } => {
                warn!(?version, %error, "directory version refused; serving the last good version");
                self.state
                    .update(|s| s.pending = Some(format!("version {version:?} refused: {error}")));
            }
        }
    }
}
