//! The standalone source: the manifests under `--resources`, polled and recompiled when any file
//! changes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use super::{DirectorySource, Publisher};
use crate::check::load_and_compile;

/// Standalone source: the manifests under a directory, recompiled when any file changes.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// `--resources`.
    pub dir: PathBuf,
    /// `--server`.
    pub server: Option<String>,
    /// How often the files are examined.
    pub interval: Duration,
    /// The files' state from before the last load read them: an edit made while the agent
    /// starts is then seen by the first poll, never lost.
    seen: Fingerprint,
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
    /// A source polling `dir` every `interval`, compiling for `server`.
    pub fn new(dir: PathBuf, server: Option<String>, interval: Duration) -> Self {
        FileSource {
            dir,
            server,
            interval,
            seen: Fingerprint::new(),
        }
    }

    /// Load once (blocking): compile, log every diagnostic, publish on success.
    pub fn load(&self, publisher: &Publisher) {
        match load_and_compile(&self.dir, self.server.as_deref()) {
            Ok((resources, compiled)) => {
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
                publisher.publish(compiled.directory, compiled.diagnostics.len());
            }
            Err(error) => {
                publisher.failed(&format!("resources {}", self.dir.display()), &error);
            }
        }
    }

    /// Fingerprint the files, then load them, on a blocking thread.
    async fn fingerprint_and_load(&mut self, publisher: &Publisher) {
        let (source, publisher) = (self.clone(), publisher.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let seen = fingerprint(&source.dir);
            source.load(&publisher);
            seen
        })
        .await;
        if let Ok(seen) = loaded {
            self.seen = seen;
        }
    }
}

impl DirectorySource for FileSource {
    const FOLLOWS_PUBLISHED_VERSIONS: bool = false;

    async fn prepare(&mut self, publisher: &Publisher) {
        self.fingerprint_and_load(publisher).await;
    }

    /// Poll for changes until `stop` turns true; compilation runs on a blocking thread.
    async fn run(mut self, publisher: Publisher, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.changed() => return,
            }
            let dir = self.dir.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&dir)).await else {
                continue;
            };
            if now != self.seen {
                self.fingerprint_and_load(&publisher).await;
            }
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
        let mut source = FileSource::new(dir.path().to_path_buf(), None, Duration::from_millis(10));
        let holder = std::sync::Arc::new(super::super::Holder::default());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics =
            super::super::metrics::SourceMetrics::register(&mut registry, holder.clone(), false);
        let publisher = Publisher::new(holder.clone(), metrics, None);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(source.prepare(&publisher));
        let first = holder.current().expect("loaded").version.clone();
        // The edit lands before the poller has started.
        std::fs::write(
            &file,
            format!("{DOMAIN}---\napiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {{name: b}}\nspec: {{address: b@example.test, uid: 5001}}\n"),
        )
        .unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut versions = holder.subscribe();
        let loaded = runtime.block_on(async {
            let poller = tokio::spawn(source.run(publisher, stop_rx));
            let changed = tokio::time::timeout(Duration::from_secs(5), versions.changed()).await;
            let _ = stop_tx.send(true);
            let _ = poller.await;
            changed.is_ok()
        });
        assert!(
            loaded && holder.current().is_some_and(|l| l.version != first),
            "the edit made before the first poll was never loaded"
        );
        let current = holder.current().unwrap();
        assert!(current.directory.mailboxes.contains_key("b@example.test"));
    }
}
