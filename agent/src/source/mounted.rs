//! Mounted-files mode: the directory from a projected ConfigMap volume, for clusters that forbid
//! API access from pods (`serve --directory-dir DIR`).
//!
//! Layout (what the operator's StatefulSet projects, `operator/src/build.rs`): the head's keys
//! (`schema`, `version`, `settings.json`, `shards`, …) as files at the top, and each shard's keys
//! under a directory named after the shard ConfigMap (`<server>-directory-07/mailboxes.jsonl`).
//!
//! The kubelet writes such a volume atomically: the files live in a timestamped directory
//! `..2026_11_25_12_00_00.123`, the symlink `..data` points at it, and a new payload is written
//! to a new timestamped directory and swapped in by renaming a fresh `..data` over the old one;
//! the old directory is then removed. Reading through the top-level names could mix two payloads
//! (and hit the removal), so a snapshot is read from the directory `..data` points at, and read
//! again from scratch if that directory vanishes under it. A plain directory without `..data`
//! (written by hand or by a tool) is read as it is.
//!
//! The kubelet fills each ConfigMap of the volume from its own cache, so one payload can hold a
//! new shard beside an old head. Such a set is never served: the same assembly step as the API
//! source accepts a version only when every shard matches the head's hash, and the last good
//! version keeps serving until a later sync brings a consistent set (fail static).
//!
//! # Security
//! The volume is written by the kubelet and mounted read-only; still, nothing is followed out of
//! it: `..data` must name a single entry of the volume, and symlinks inside a snapshot are
//! ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use virtmail_crds::encoding::{self, Data, ShardHashes};

use super::assemble::{Assembly, assemble};
use super::{DirectorySource, Loaded, Publisher};

/// The kubelet's symlink to the current payload.
const DATA_LINK: &str = "..data";
/// How many times a snapshot is re-read when the kubelet swaps the payload during the read.
const READ_ATTEMPTS: usize = 5;
/// A version that could not be assembled is tried again at least this often, even if the volume
/// did not change (a plain directory edited in place keeps its modification times coarse).
const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Where the directory comes from in mounted-files mode.
#[derive(Debug, Clone)]
pub struct MountedSource {
    /// The mounted volume.
    pub dir: PathBuf,
    /// The MailServer the directory must belong to (its `settings.server`), if given.
    pub server: Option<String>,
    /// How often the volume is examined for a new payload.
    pub interval: Duration,
}

/// One consistent read of the volume.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Identifies the payload: the `..data` target, or a signature of names, sizes and
    /// modification times for a plain directory.
    pub key: String,
    /// The head's keys, if the head is present.
    pub head: Option<Data>,
    /// Shards by ConfigMap name.
    pub shards: BTreeMap<String, Data>,
}

/// The directory holding the current payload, and the payload's key when it is a kubelet volume.
fn payload_root(dir: &Path) -> io::Result<(PathBuf, Option<String>)> {
    match std::fs::read_link(dir.join(DATA_LINK)) {
        Ok(target) => {
            let mut components = target.components();
            match (components.next(), components.next()) {
                (Some(Component::Normal(name)), None) => {
                    let name = name.to_string_lossy().into_owned();
                    Ok((dir.join(&name), Some(name)))
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}/{DATA_LINK} points outside the volume: {}",
                        dir.display(),
                        target.display()
                    ),
                )),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((dir.to_path_buf(), None)),
        Err(e) => Err(e),
    }
}

/// Regular files of a directory as ConfigMap data; dot-names and symlinks are skipped, and
/// subdirectories are returned by name.
fn read_entries(dir: &Path) -> io::Result<(Data, Vec<String>)> {
    let mut files = Data::new();
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_file() {
            let bytes = std::fs::read(entry.path())?;
            let text = String::from_utf8(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not UTF-8", entry.path().display()),
                )
            })?;
            files.insert(name, text);
        } else if kind.is_dir() {
            subdirs.push(name);
        }
    }
    Ok((files, subdirs))
}

/// A signature of a plain directory: every entry's name, size and modification time, one level
/// down.
fn plain_signature(root: &Path) -> io::Result<String> {
    let mut lines = Vec::new();
    let mut visit = |dir: &Path, prefix: &str| -> io::Result<Vec<String>> {
        let mut subdirs = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_default();
            lines.push(format!(
                "{prefix}{name} {} {}",
                meta.len(),
                mtime.as_nanos()
            ));
            if meta.is_dir() && !name.starts_with('.') {
                subdirs.push(name);
            }
        }
        Ok(subdirs)
    };
    for sub in visit(root, "")? {
        visit(&root.join(&sub), &format!("{sub}/"))?;
    }
    lines.sort();
    Ok(lines.join("\n"))
}

/// The key of the payload now in the volume (cheap: one readlink, or stat calls).
pub fn payload_key(dir: &Path) -> io::Result<String> {
    match payload_root(dir)? {
        (_, Some(name)) => Ok(name),
        (root, None) => plain_signature(&root),
    }
}

fn is_vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Read one consistent snapshot of the volume: the head, and the shards it names that `held`
/// (the served version's shards) does not hold with the same hash.
pub fn read_snapshot(dir: &Path, held: &ShardHashes) -> io::Result<Snapshot> {
    let mut last = None;
    for _ in 0..READ_ATTEMPTS {
        match read_once(dir, held) {
            Ok(snapshot) => return Ok(snapshot),
            // The kubelet removed the payload we were reading: read the new one.
            Err(e) if is_vanished(&e) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("volume keeps changing")))
}

fn read_once(dir: &Path, held: &ShardHashes) -> io::Result<Snapshot> {
    let (root, kubelet_key) = payload_root(dir)?;
    let key = match &kubelet_key {
        Some(name) => name.clone(),
        None => plain_signature(&root)?,
    };
    let (head, subdirs) = read_entries(&root)?;
    // A head that does not parse is refused by the assembly; read everything for its report.
    let to_read: Option<BTreeSet<String>> = encoding::shards_to_read(&head, held)
        .ok()
        .map(|list| list.into_iter().map(|(name, _)| name).collect());
    let mut shards = BTreeMap::new();
    for name in subdirs {
        if to_read.as_ref().is_some_and(|names| !names.contains(&name)) {
            continue;
        }
        let (data, _) = read_entries(&root.join(&name))?;
        shards.insert(name, data);
    }
    // A payload swapped while we read it may be half old, half new: read again.
    if let Some(name) = kubelet_key
        && payload_root(dir)?.1.as_deref() != Some(name.as_str())
    {
        return Err(io::Error::new(io::ErrorKind::NotFound, "payload swapped"));
    }
    Ok(Snapshot {
        key,
        head: (!head.is_empty()).then_some(head),
        shards,
    })
}

/// Assemble what a snapshot holds, refusing a directory of another server.
pub fn assemble_snapshot(
    snapshot: &Snapshot,
    server: Option<&str>,
    serving: Option<&Loaded>,
) -> Assembly {
    let assembly = assemble(snapshot.head.as_ref(), &snapshot.shards, serving);
    match (assembly, server) {
        (Assembly::Ready { decoded, .. }, Some(want))
            if decoded.directory.settings.server != want =>
        {
            Assembly::Invalid {
                version: None,
                error: encoding::DecodeError::Head(format!(
                    "the directory is of server {:?}, not {want:?}",
                    decoded.directory.settings.server
                )),
            }
        }
        (assembly, _) => assembly,
    }
}

impl DirectorySource for MountedSource {
    /// Examine the volume every `interval` and publish every new complete version, until `stop`
    /// turns true.
    async fn run(self, publisher: Publisher, mut stop: watch::Receiver<bool>) {
        let mut attempted: Option<(String, Instant)> = None;
        let head = format!("directory head in {}", self.dir.display());
        loop {
            let dir = self.dir.clone();
            match blocking(move || payload_key(&dir)).await {
                Ok(key) => {
                    let pending = publisher.status().pending.is_some();
                    let due = match &attempted {
                        Some((last, at)) => {
                            *last != key || (pending && at.elapsed() >= RETRY_INTERVAL)
                        }
                        None => true,
                    };
                    if due {
                        attempted = Some((key, Instant::now()));
                        self.attempt(&head, &publisher).await;
                    }
                }
                Err(error) => self.failed(&publisher, error),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.changed() => if *stop.borrow() { return },
            }
        }
    }
}

impl MountedSource {
    async fn attempt(&self, head: &str, publisher: &Publisher) {
        let dir = self.dir.clone();
        let serving = publisher.current();
        let held = serving
            .as_ref()
            .map(|loaded| loaded.hashes.clone())
            .unwrap_or_default();
        match blocking(move || read_snapshot(&dir, &held)).await {
            Ok(snapshot) => {
                publisher.source_error(None);
                let assembly =
                    assemble_snapshot(&snapshot, self.server.as_deref(), serving.as_deref());
                publisher.settle(head, assembly);
            }
            Err(error) => self.failed(publisher, error),
        }
    }

    fn failed(&self, publisher: &Publisher, error: String) {
        tracing::warn!(dir = %self.dir.display(), %error, "cannot read the directory volume; serving the last good version");
        publisher.source_error(Some(error));
    }
}

/// Run a file system read on a blocking thread; a read error and a failed task are both errors.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests;
