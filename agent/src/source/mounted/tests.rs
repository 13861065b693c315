use std::os::unix::fs::symlink;
use std::path::Path;

use virtmail_crds::Directory;
use virtmail_crds::encoding::{self, DecodeError, Encoded};
use virtmail_crds::manifests::load_dir;

use super::*;

fn encoded(example: &str, edit: impl FnOnce(&mut Directory)) -> Encoded {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example);
    let resources = load_dir(&dir).expect("example");
    let server = resources.server(None).expect("server");
    let mut directory = virtmail_crds::compile(resources.inputs(&server)).directory;
    edit(&mut directory);
    encoding::encode(&directory)
}

/// Files of a payload: head keys at the top, shard keys under the shard's name.
fn payload_files(e: &Encoded) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> =
        e.head.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for shard in &e.shards {
        for (k, v) in shard.data.iter() {
            files.push((format!("{}/{k}", shard.name), v.clone()));
        }
    }
    files
}

fn write_files(root: &Path, files: &[(String, String)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

/// What the kubelet's atomic writer does: a new timestamped directory, `..data` swapped to it by
/// rename, top-level symlinks through `..data`, the old payload removed.
fn kubelet_swap(volume: &Path, stamp: &str, files: &[(String, String)]) {
    let payload = format!("..{stamp}");
    std::fs::create_dir_all(volume.join(&payload)).expect("payload dir");
    write_files(&volume.join(&payload), files);
    let old = std::fs::read_link(volume.join("..data")).ok();
    let _ = std::fs::remove_file(volume.join("..data_tmp"));
    symlink(&payload, volume.join("..data_tmp")).expect("symlink");
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("swap");
    for (path, _) in files {
        let top = path.split('/').next().expect("top");
        let link = volume.join(top);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{top}"), link).expect("top-level link");
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(old)).expect("remove old payload");
    }
}

fn ready(assembly: Assembly) -> Loaded {
    match assembly {
        Assembly::Ready { decoded, version } => {
            Loaded::new(decoded.directory, version, decoded.hashes)
        }
        other => panic!("not ready: {other:?}"),
    }
}

/// An example written as a plain directory, and what reading it gives.
fn plain_volume(example: &str) -> (tempfile::TempDir, Encoded, Snapshot) {
    let tmp = tempfile::tempdir().expect("tmp");
    let e = encoded(example, |_| {});
    write_files(tmp.path(), &payload_files(&e));
    let snapshot = read_snapshot(tmp.path(), &ShardHashes::default()).expect("read");
    (tmp, e, snapshot)
}

#[test]
fn plain_directory_is_read_as_it_is() {
    let (tmp, e, snapshot) = plain_volume("3-many-virtual-users");
    let Loaded {
        directory, version, ..
    } = ready(assemble_snapshot(&snapshot, None, None));
    assert_eq!(version, e.version);
    assert_eq!(directory.mailboxes.len(), 13);
    assert_eq!(snapshot.key, payload_key(tmp.path()).expect("key"));
}

#[test]
fn kubelet_payload_swap_gives_the_new_version_and_a_new_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let first = encoded("1-virtual-for-all-mail", |_| {});
    kubelet_swap(tmp.path(), "2026_11_25_12_00_00.1", &payload_files(&first));
    let a = read_snapshot(tmp.path(), &ShardHashes::default()).expect("read");
    assert_eq!(a.key, "..2026_11_25_12_00_00.1");
    let serving = ready(assemble_snapshot(&a, Some("mail"), None));
    assert_eq!(serving.version, first.version);

    let second = encoded("1-virtual-for-all-mail", |d| {
        d.mailboxes.values_mut().for_each(|m| m.suspended = true)
    });
    kubelet_swap(tmp.path(), "2026_11_25_12_01_00.2", &payload_files(&second));
    assert_eq!(
        payload_key(tmp.path()).expect("key"),
        "..2026_11_25_12_01_00.2"
    );
    let b = read_snapshot(tmp.path(), &serving.hashes).expect("read");
    let Loaded {
        directory, version, ..
    } = ready(assemble_snapshot(&b, Some("mail"), Some(&serving)));
    assert_eq!(version, second.version);
    assert!(directory.mailboxes.values().all(|m| m.suspended));
    assert!(
        !tmp.path().join("..2026_11_25_12_00_00.1").exists(),
        "the old payload is gone, as the kubelet leaves it"
    );
}

#[test]
fn payload_with_a_new_shard_beside_the_old_head_is_not_served() {
    // The kubelet fills each ConfigMap from its own cache: the shard may be newer than the head.
    let tmp = tempfile::tempdir().expect("tmp");
    let old = encoded("3-many-virtual-users", |_| {});
    let new = encoded("3-many-virtual-users", |d| {
        d.mailboxes.values_mut().for_each(|m| m.suspended = true)
    });
    let mut files: Vec<(String, String)> = old
        .head
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    files.extend(
        payload_files(&new)
            .into_iter()
            .filter(|(path, _)| path.contains('/')),
    );
    kubelet_swap(tmp.path(), "2026_11_25_12_00_00.1", &files);
    let snapshot = read_snapshot(tmp.path(), &ShardHashes::default()).expect("read");
    assert!(matches!(
        assemble_snapshot(&snapshot, None, None),
        Assembly::Invalid {
            error: DecodeError::HashMismatch { .. },
            ..
        }
    ));
}

#[test]
fn empty_volume_has_no_head() {
    // The pod starts before the operator's first publish (every source is optional).
    let tmp = tempfile::tempdir().expect("tmp");
    kubelet_swap(tmp.path(), "2026_11_25_12_00_00.1", &[]);
    let snapshot = read_snapshot(tmp.path(), &ShardHashes::default()).expect("read");
    assert!(matches!(
        assemble_snapshot(&snapshot, None, None),
        Assembly::NoHead
    ));
}

#[test]
fn directory_of_another_server_is_refused() {
    let (_tmp, _, snapshot) = plain_volume("1-virtual-for-all-mail");
    assert!(matches!(
        assemble_snapshot(&snapshot, Some("other"), None),
        Assembly::Invalid {
            error: DecodeError::Head(_),
            ..
        }
    ));
}

#[test]
fn data_link_out_of_the_volume_is_refused_and_symlinked_shards_are_ignored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let volume = tmp.path().join("volume");
    let elsewhere = tmp.path().join("elsewhere");
    let e = encoded("1-virtual-for-all-mail", |_| {});
    write_files(&elsewhere, &payload_files(&e));
    std::fs::create_dir(&volume).expect("mkdir");
    symlink("../elsewhere", volume.join("..data")).expect("symlink");
    let error = read_snapshot(&volume, &ShardHashes::default()).expect_err("outside");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);

    // A plain volume whose shard directory is a symlink: the shard counts as missing.
    let plain = tmp.path().join("plain");
    let head: Vec<(String, String)> = e.head.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    write_files(&plain, &head);
    symlink(
        elsewhere.join(&e.shards[0].name),
        plain.join(&e.shards[0].name),
    )
    .expect("symlink");
    let snapshot = read_snapshot(&plain, &ShardHashes::default()).expect("read");
    assert!(matches!(
        assemble_snapshot(&snapshot, None, None),
        Assembly::Waiting { .. }
    ));
}

#[test]
fn a_new_payload_is_read_only_for_the_shards_that_changed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut directory = Directory::synthetic(20_000);
    let first = encoding::encode(&directory);
    assert!(first.shards.len() > 1);
    kubelet_swap(tmp.path(), "2026_11_25_12_00_00.1", &payload_files(&first));
    let read = read_snapshot(tmp.path(), &ShardHashes::default()).expect("read");
    assert_eq!(read.shards.len(), first.shards.len());
    let serving = ready(assemble_snapshot(&read, Some("mail"), None));

    directory
        .mailboxes
        .get_mut("user7@domain7.test")
        .expect("exists")
        .suspended = true;
    let second = encoding::encode(&directory);
    kubelet_swap(tmp.path(), "2026_11_25_12_01_00.2", &payload_files(&second));
    let read = read_snapshot(tmp.path(), &serving.hashes).expect("read");
    let changed: Vec<&String> = second
        .shards
        .iter()
        .zip(&first.shards)
        .filter(|(new, old)| new.hash != old.hash)
        .map(|(new, _)| &new.name)
        .collect();
    assert_eq!(read.shards.keys().collect::<Vec<_>>(), changed);
    let next = ready(assemble_snapshot(&read, Some("mail"), Some(&serving)));
    assert_eq!(next.version, second.version);
    assert_eq!(*next.directory, directory);
}
