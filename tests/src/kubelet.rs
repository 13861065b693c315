//! The kubelet's part of a projected ConfigMap volume, for tests of the agent's mounted-files
//! mode without a node: read the `projected` volume a StatefulSet declares, fetch its
//! ConfigMaps from the real apiserver, and write the payload the way the kubelet's atomic writer
//! does (a timestamped `..<stamp>` directory, `..data` renamed over to point at it, top-level
//! symlinks through `..data`, the previous payload removed). `optional` sources and keys are
//! skipped when missing, `items` map keys to paths, as the kubelet does.
//!
//! Like the kubelet, each sync reads the ConfigMaps at one moment and writes only when the
//! payload changed; unlike it, it syncs every `period` instead of on its own schedule (up to a
//! minute on a real node).

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{Cluster, TestNamespace, run};

/// Files of one payload: relative path → content.
pub type Payload = BTreeMap<String, String>;

/// The `projected.sources` of volume `volume` in StatefulSet `name`.
pub fn projected_sources(ns: &TestNamespace, name: &str, volume: &str) -> Vec<Value> {
    let sts = ns.get_json("statefulset", name);
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = volumes
        .iter()
        .find(|v| v["name"] == volume)
        .unwrap_or_else(|| panic!("StatefulSet {name} has no volume {volume}: {volumes:#?}"));
    found["projected"]["sources"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("volume {volume} is not projected: {found:#}"))
}

/// Compute the payload of `sources` from the ConfigMaps of `namespace` now (one list, so every
/// ConfigMap is read at the same moment).
pub fn payload(cluster: &Cluster, namespace: &str, sources: &[Value]) -> Payload {
    let list: Value = serde_json::from_str(
        &run(cluster
            .kubectl()
            .args(["-n", namespace, "get", "configmaps", "-o", "json"]))
        .expect("list configmaps"),
    )
    .expect("configmap list JSON");
    let maps: BTreeMap<String, BTreeMap<String, String>> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|cm| {
            let data = cm["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            (
                cm["metadata"]["name"].as_str().unwrap_or("").to_string(),
                data,
            )
        })
        .collect();
    let mut files = Payload::new();
    for source in sources {
        let projection = &source["configMap"];
        let name = projection["name"].as_str().expect("configMap source name");
        let optional = projection["optional"] == true;
        let Some(data) = maps.get(name) else {
            assert!(optional, "ConfigMap {name} is missing and not optional");
            continue;
        };
        match projection["items"].as_array() {
            None => files.extend(data.clone()),
            Some(items) => {
                for item in items {
                    let key = item["key"].as_str().expect("item key");
                    let path = item["path"].as_str().expect("item path");
                    match data.get(key) {
                        Some(value) => {
                            files.insert(path.to_string(), value.clone());
                        }
                        None => assert!(optional, "key {key} missing in {name}"),
                    }
                }
            }
        }
    }
    files
}

/// Write `payload` into `volume` as the kubelet's atomic writer does. `stamp` names the new
/// payload directory.
pub fn write_payload(volume: &Path, stamp: &str, payload: &Payload) {
    let dir_name = format!("..{stamp}");
    let dir = volume.join(&dir_name);
    std::fs::create_dir_all(&dir).expect("payload directory");
    for (path, content) in payload {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write payload file");
    }
    let old = std::fs::read_link(volume.join("..data")).ok();
    let tmp = volume.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&dir_name, &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, volume.join("..data")).expect("swap ..data");
    let tops: std::collections::BTreeSet<&str> = payload
        .keys()
        .map(|p| p.split('/').next().expect("top"))
        .collect();
    for top in &tops {
        let link = volume.join(top);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{top}"), link).expect("top-level link");
        }
    }
    // Top-level names the new payload no longer has.
    for entry in std::fs::read_dir(volume).expect("read volume").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !tops.contains(name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(old)).expect("remove the previous payload");
    }
}

/// A projected volume kept in sync in the background.
#[derive(Debug)]
pub struct ProjectedVolume {
    /// The volume's directory (what `--directory-dir` names).
    pub dir: PathBuf,
    /// Payloads written so far.
    pub writes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProjectedVolume {
    /// Sync `sources` into `dir` now and then every `period` until dropped.
    pub fn start(
        namespace: &TestNamespace,
        sources: Vec<Value>,
        dir: &Path,
        period: Duration,
    ) -> ProjectedVolume {
        std::fs::create_dir_all(dir).expect("volume directory");
        let (stop, writes) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (volume, stop_flag, count) = (dir.to_path_buf(), stop.clone(), writes.clone());
        let mut last = None;
        let (cluster, name) = (namespace.cluster(), namespace.name().to_string());
        let mut sync = move || {
            let files = payload(cluster, &name, &sources);
            if last.as_ref() != Some(&files) {
                let n = count.fetch_add(1, Ordering::SeqCst);
                write_payload(&volume, &format!("sync_{n:06}"), &files);
                last = Some(files);
            }
        };
        sync();
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                std::thread::sleep(period);
                sync();
            }
        });
        ProjectedVolume {
            dir: dir.to_path_buf(),
            writes,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ProjectedVolume {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
