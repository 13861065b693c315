//! The directory holder and its standalone source (files under `--resources`, polled).
//!
//! Every reader takes one `Arc<Loaded>` snapshot and answers from it alone, so a swap is atomic:
//! no lookup or transaction ever sees parts of two directories. A later cluster source (directory
//! ConfigMaps) only has to call [`Holder::swap`] the same way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use virtmail_crds::{Directory, encoding};

use super::metrics::Metrics;
use crate::check::load_and_compile;

/// One loaded directory.
#[derive(Debug)]
pub struct Loaded {
    /// The directory.
    pub directory: Arc<Directory>,
    /// Its content version (as published in ConfigMaps).
    pub version: String,
    /// When it was swapped in (Unix seconds).
    pub loaded_unix: u64,
}

/// The current directory, swapped atomically; `None` until the first successful load.
#[derive(Debug, Default)]
pub struct Holder {
    current: ArcSwapOption<Loaded>,
}

impl Holder {
    /// The current snapshot.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    /// Replace the directory.
    pub fn swap(&self, directory: Directory) -> Arc<Loaded> {
        let version = encoding::version(&directory);
        self.swap_with_version(directory, version)
    }

    /// Replace the directory with one whose version is known (as published in ConfigMaps).
    pub fn swap_with_version(
        &self,
        directory: impl Into<Arc<Directory>>,
        version: String,
    ) -> Arc<Loaded> {
        let directory = directory.into();
        let loaded = Arc::new(Loaded {
            version,
            directory,
            loaded_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        });
        self.current.store(Some(loaded.clone()));
        loaded
    }
}

/// Standalone source: the manifests under a directory, recompiled when any file changes.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// `--resources`.
    pub dir: PathBuf,
    /// `--server`.
    pub server: Option<String>,
    /// `--mailbox-base`: overrides the MailServer's `mailboxBase` (running outside a pod).
    pub mailbox_base: Option<PathBuf>,
    /// How often the files are examined.
    pub interval: Duration,
}

/// What identifies one state of the resource files: path, size, mtime, inode of each.
pub type Fingerprint = Vec<(PathBuf, u64, i64, i64, u64)>;

fn fingerprint(root: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        out.push((
            path.clone(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ino(),
        ));
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.flatten().map(|e| e.path()));
        }
    }
    out.sort();
    out
}

impl FileSource {
    /// Load once: compile, log every diagnostic, swap on success. Returns whether it swapped.
    pub fn load(&self, holder: &Holder, metrics: &Metrics) -> bool {
        match load_and_compile(&self.dir, self.server.as_deref()) {
            Ok((resources, mut compiled)) => {
                for d in &compiled.diagnostics {
                    let source = resources
                        .source_of(&d.object)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "?".into());
                    tracing::warn!(
                        source = %source,
                        object = %d.object,
                        reason = %d.reason,
                        effect = ?d.effect,
                        "{}",
                        d.message
                    );
                }
                if let Some(base) = &self.mailbox_base {
                    compiled.directory.settings.mailbox_base = base.display().to_string();
                }
                let previous = holder.current().map(|l| l.version.clone());
                let loaded = holder.swap(compiled.directory);
                metrics.reload_ok(compiled.diagnostics.len());
                if previous.as_deref() != Some(loaded.version.as_str()) {
                    tracing::info!(
                        version = %loaded.version,
                        server = %loaded.directory.settings.server,
                        domains = loaded.directory.domains.len(),
                        mailboxes = loaded.directory.mailboxes.len(),
                        aliases = loaded.directory.aliases.len(),
                        diagnostics = compiled.diagnostics.len(),
                        "directory loaded"
                    );
                }
                true
            }
            Err(error) => {
                metrics.reload_failed(&error);
                tracing::error!(
                    resources = %self.dir.display(),
                    kept = holder.current().map(|l| l.version.clone()).as_deref().unwrap_or("none"),
                    "cannot load resources, keeping the previous directory: {error}"
                );
                false
            }
        }
    }

    /// The first load. Returns the files' state from before it read them, for [`Self::run`]:
    /// an edit made while the agent starts is then seen by the first poll, never lost.
    pub fn load_initial(&self, holder: &Holder, metrics: &Metrics) -> Fingerprint {
        let seen = fingerprint(&self.dir);
        self.load(holder, metrics);
        seen
    }

    /// Poll for changes from the state `seen` until `stop` turns true. Compilation runs on a
    /// blocking thread.
    pub async fn run(
        self,
        mut seen: Fingerprint,
        holder: Arc<Holder>,
        metrics: Arc<Metrics>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.changed() => return,
            }
            let dir = self.dir.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&dir)).await else {
                continue;
            };
            if now == seen {
                continue;
            }
            seen = now;
            let (source, h, m) = (self.clone(), holder.clone(), metrics.clone());
            let _ = tokio::task::spawn_blocking(move || source.load(&h, &m)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "apiVersion: virtmail.io/v1alpha1
kind: MailDomain
metadata: {name: d}
spec: {domain: example.test, postmaster: a@example.test, defaults: {uid: 5000, gid: 5000}}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: a}
spec: {address: a@example.test}
";

    #[test]
    fn an_edit_made_between_the_first_load_and_the_first_poll_is_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("all.yaml");
        std::fs::write(&file, DOMAIN).unwrap();
        let source = FileSource {
            dir: dir.path().to_path_buf(),
            server: None,
            mailbox_base: None,
            interval: Duration::from_millis(10),
        };
        let (holder, metrics) = (Arc::new(Holder::default()), Arc::new(Metrics::default()));
        let seen = source.load_initial(&holder, &metrics);
        let first = holder.current().expect("loaded").version.clone();
        // The edit lands before the poller has started.
        std::fs::write(
            &file,
            format!("{DOMAIN}---\napiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {{name: b}}\nspec: {{address: b@example.test, uid: 5001}}\n"),
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let loaded = runtime.block_on(async {
            let poller = tokio::spawn(source.run(seen, holder.clone(), metrics, stop_rx));
            let mut loaded = false;
            for _ in 0..500 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if holder.current().is_some_and(|l| l.version != first) {
                    loaded = true;
                    break;
                }
            }
            let _ = stop_tx.send(true);
            let _ = poller.await;
            loaded
        });
        assert!(
            loaded,
            "the edit made before the first poll was never loaded"
        );
        let current = holder.current().unwrap();
        assert!(current.directory.mailboxes.contains_key("b@example.test"));
    }
}
