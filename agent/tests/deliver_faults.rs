//! Faults: a full file system (a 1 MiB tmpfs mounted for the test) leaves the mbox at its
//! original length and nothing in Maildir new/ or tmp/ (virtual(8) V22, V30; docs/DELIVERY.md).

mod deliver_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use deliver_support::*;
use virtmail_tests::tmpfs::Tmpfs;

fn big() -> Vec<u8> {
    let mut m = b"Subject: big\n\n".to_vec();
    for i in 0..40_000 {
        m.extend_from_slice(
            format!("line {i:08} of a message too large for the disk\n").as_bytes(),
        );
    }
    m
}

/// A world whose base is a 1 MiB tmpfs with the domain directory and one mailbox `address` at
/// `path` that already holds one message; the tmpfs and the domain directory.
fn full_disk_world(address: &str, path: &str) -> (World, Tmpfs, PathBuf) {
    let mut w = World::create();
    let tmpfs = Tmpfs::mount(&w.dir.path().join("tmpfs"), "1m");
    fs::set_permissions(&tmpfs.path, fs::Permissions::from_mode(0o755)).unwrap();
    w.directory.settings.mailbox_base = tmpfs.path.display().to_string();
    let domain = tmpfs.path.join(DOMAIN);
    fs::create_dir(&domain).unwrap();
    chown(&domain, UID, GID);
    w.mailbox(address, path);
    assert_eq!(code(&w.deliver(address, MESSAGE).status), "2.0.0");
    (w, tmpfs, domain)
}

#[test]
fn v30_disk_full_defers_430_and_truncates_the_mbox_back() {
    let (w, tmpfs, domain) = full_disk_world("bob@example.test", "example.test/bob");
    let before = fs::read(domain.join("bob")).unwrap();
    let outcome = w.deliver("bob@example.test", &big());
    assert_eq!(
        outcome.status.to_string(),
        format!(
            "4.3.0 delivery failed to mailbox {}: error writing message: No space left on device",
            domain.join("bob").display()
        )
    );
    assert_eq!(outcome.status.reply_code(), 452);
    assert_eq!(fs::read(domain.join("bob")).unwrap(), before);
    assert_eq!(
        names(&domain),
        vec![".bob.virtmail-append", "bob"],
        "dotlock removed (the empty append journal stays)"
    );
    assert_eq!(
        fs::metadata(domain.join(".bob.virtmail-append"))
            .unwrap()
            .len(),
        0,
        "the journal of the failed append is cleared"
    );
    drop(tmpfs);
}

#[test]
fn v30_disk_full_defers_430_and_leaves_nothing_in_maildir() {
    let (w, tmpfs, domain) = full_disk_world("alice@example.test", "example.test/alice/");
    let outcome = w.deliver("alice@example.test", &big());
    assert_eq!(
        outcome.status.to_string(),
        "4.3.0 maildir delivery failed: error writing message: No space left on device"
    );
    assert_eq!(
        names(&domain.join("alice/new")).len(),
        1,
        "only the first message"
    );
    assert!(names(&domain.join("alice/tmp")).is_empty());
    drop(tmpfs);
}
