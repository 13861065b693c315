//! Recipient resolution and RCPT-time checks (virtual(8) V1–V10, V14, V31; docs/DELIVERY.md loop detection,
//! suspension, reply mapping).

mod deliver_support;

use std::fs;

use deliver_support::*;
use virtmail_agent::deliver::{self, Envelope, Recipient};

fn world() -> World {
    let mut w = World::create();
    w.domain_dir();
    w.mailbox("alice@example.test", "example.test/alice/");
    w
}

#[test]
fn v2_lookup_is_case_folded_but_delivered_to_keeps_the_case() {
    let w = world();
    let outcome = w.deliver("ALICE@Example.Test", MESSAGE);
    assert_eq!(code(&outcome.status), "2.0.0");
    let text = fs::read_to_string(outcome.path.unwrap()).unwrap();
    assert!(
        text.contains("\nDelivered-To: ALICE@Example.Test\n"),
        "{text}"
    );
}

#[test]
fn v3_v4_extension_is_stripped_for_lookup_only() {
    let w = world();
    let target = deliver::precheck(&w.directory, "alice+news@example.test").unwrap();
    assert_eq!(target.key, "alice@example.test");
    assert_eq!(target.recipient, "alice+news@example.test");
}

#[test]
fn v3_catch_all_is_the_last_resort() {
    let mut w = world();
    w.directory.domains.get_mut(DOMAIN).unwrap().catch_all = Some("alice@example.test".into());
    assert_eq!(
        deliver::precheck(&w.directory, "anyone@example.test")
            .unwrap()
            .key,
        "alice@example.test"
    );
}

#[test]
fn v6_unknown_user_bounces_511_with_the_folded_address() {
    let w = world();
    let status = deliver::precheck(&w.directory, "Nobody@Example.TEST").unwrap_err();
    assert_eq!(
        status.to_string(),
        "5.1.1 unknown user: \"nobody@example.test\""
    );
    assert_eq!(status.reply_code(), 550);
}

#[test]
fn v7_deferring_directory_entry_defers_435() {
    let mut w = world();
    w.deferring("broken@example.test", "example.test/broken/");
    let status = deliver::precheck(&w.directory, "broken@example.test").unwrap_err();
    assert_eq!(status.to_string(), "4.3.5 mail system configuration error");
    assert_eq!(status.reply_code(), 451);
    assert!(status.warning.unwrap().contains("InvalidOwner"));
}

#[test]
fn v9_uid_below_minimum_or_zero_defers_435() {
    let mut w = world();
    w.mailbox("low@example.test", "example.test/low/").uid = 99;
    w.mailbox("root@example.test", "example.test/root/").uid = 0;
    for rcpt in ["low@example.test", "root@example.test"] {
        let status = deliver::precheck(&w.directory, rcpt).unwrap_err();
        assert_eq!(code(&status), "4.3.5");
        assert!(status.warning.unwrap().contains("bad uid"));
    }
}

#[test]
fn v10_gid_zero_defers_435() {
    let mut w = world();
    w.mailbox("g@example.test", "example.test/g/").gid = 0;
    let status = deliver::precheck(&w.directory, "g@example.test").unwrap_err();
    assert_eq!(code(&status), "4.3.5");
    assert!(
        status
            .warning
            .unwrap()
            .contains("bad gid 0 in virtual_gid_maps")
    );
}

#[test]
fn v13_relative_base_defers_435() {
    let mut w = world();
    w.directory.settings.mailbox_base = "relative/base".into();
    assert_eq!(
        code(&deliver::precheck(&w.directory, "alice@example.test").unwrap_err()),
        "4.3.5"
    );
}

#[test]
fn suspended_mailbox_is_refused_421_at_rcpt() {
    let mut w = world();
    w.directory
        .mailboxes
        .get_mut("alice@example.test")
        .unwrap()
        .suspended = true;
    let status = deliver::precheck(&w.directory, "alice@example.test").unwrap_err();
    assert_eq!(code(&status), "4.2.1");
    assert_eq!(status.reply_code(), 450);
}

#[test]
fn delivered_to_loop_bounces_546() {
    let w = world();
    let looping = b"Delivered-To: alice@example.test\nSubject: loop\n\nx\n";
    let outcome = w.deliver("alice@example.test", looping);
    assert_eq!(
        outcome.status.to_string(),
        "5.4.6 mail forwarding loop for alice@example.test"
    );
    assert_eq!(outcome.status.reply_code(), 554);
    assert!(!w.base.join("example.test/alice").exists());
    // Another recipient's Delivered-To is no loop.
    let other = b"Delivered-To: bob@example.test\n\nx\n";
    assert_eq!(
        code(&w.deliver("alice@example.test", other).status),
        "2.0.0"
    );
}

#[test]
fn v1_each_recipient_is_independent_and_duplicates_get_two_copies() {
    let w = world();
    let envelope = Envelope {
        sender: "s@origin.test".into(),
        recipients: [
            "alice@example.test",
            "nobody@example.test",
            "Alice+x@example.test",
        ]
        .iter()
        .map(|a| Recipient {
            address: a.to_string(),
            original_recipient: a.to_string(),
        })
        .collect(),
    };
    let outcomes = deliver::deliver(&w.directory, &envelope, MESSAGE, &options());
    let codes: Vec<String> = outcomes.iter().map(|o| code(&o.status)).collect();
    assert_eq!(codes, ["2.0.0", "5.1.1", "2.0.0"]);
    assert_eq!(names(&w.base.join("example.test/alice/new")).len(), 2);
}

#[test]
fn v31_bytes_are_kept_exactly_after_crlf_to_lf() {
    let w = world();
    let mut wire = b"Subject: \xc3\xa4 8bit\r\n\r\nNUL\0here\r\nstray\rCR\r\n".to_vec();
    wire.extend(vec![b'L'; 5000]);
    wire.extend_from_slice(b"\r\n\xff\xfe\r\n");
    let message = deliver::crlf_to_lf(&wire);
    let outcome = w.deliver("alice@example.test", &message);
    let stored = fs::read(outcome.path.unwrap()).unwrap();
    let body_start = stored.windows(8).position(|w| w == b"Subject:").unwrap();
    let mut expected = b"Subject: \xc3\xa4 8bit\n\nNUL\0here\nstray\rCR\n".to_vec();
    expected.extend(vec![b'L'; 5000]);
    expected.extend_from_slice(b"\n\xff\xfe\n");
    assert_eq!(&stored[body_start..], &expected[..]);
}

#[test]
fn deliveries_of_different_recipients_run_concurrently_on_threads() {
    let mut w = World::create();
    w.mkdir(DOMAIN, UID, GID);
    w.mkdir("other.test", OTHER_UID, OTHER_GID);
    w.directory
        .domains
        .insert("other.test".into(), w.directory.domains[DOMAIN].clone());
    w.mailbox("a@example.test", "example.test/a/");
    w.mailbox("m@example.test", "example.test/m");
    let o = w.mailbox("o@other.test", "other.test/o/");
    o.uid = OTHER_UID;
    o.gid = OTHER_GID;
    let w = &w;
    std::thread::scope(|scope| {
        for i in 0..8 {
            scope.spawn(move || {
                for rcpt in ["a@example.test", "m@example.test", "o@other.test"] {
                    let outcome = w.deliver(rcpt, format!("Subject: {i}\n\nx\n").as_bytes());
                    assert_eq!(code(&outcome.status), "2.0.0", "{rcpt}: {}", outcome.status);
                }
            });
        }
    });
    assert_eq!(names(&w.base.join("example.test/a/new")).len(), 8);
    assert_eq!(names(&w.base.join("other.test/o/new")).len(), 8);
    for file in names(&w.base.join("other.test/o/new")) {
        assert_eq!(
            owner(&w.base.join("other.test/o/new").join(file)),
            (OTHER_UID, OTHER_GID)
        );
    }
    let mbox = fs::read_to_string(w.base.join("example.test/m")).unwrap();
    assert_eq!(mbox.matches("From sender@origin.test  ").count(), 8);
    // The test thread's own identity was never changed.
    assert_eq!(nix::unistd::geteuid().as_raw(), 0);
}

#[test]
fn v16_identity_is_restored_on_the_delivering_thread() {
    let w = world();
    assert_eq!(
        code(&w.deliver("alice@example.test", MESSAGE).status),
        "2.0.0"
    );
    // setfsuid(-1) changes nothing and returns the current file system ids.
    let fsuid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(u32::MAX)).as_raw();
    let fsgid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(u32::MAX)).as_raw();
    assert_eq!((fsuid, fsgid), (0, 0));
}

#[test]
fn v16_root_identity_is_refused_by_the_guard() {
    require_root();
    use virtmail_agent::fs::identity::FsIdentity;
    assert!(FsIdentity::assume(0, GID).is_err());
    assert!(FsIdentity::assume(UID, 0).is_err());
    let dir = tempfile::tempdir().unwrap();
    let guard = FsIdentity::assume(UID, GID).unwrap();
    // The kernel now checks as uid 5001: a root-only directory is closed.
    let denied = fs::write(dir.path().join("x"), b"x").unwrap_err();
    assert_eq!(denied.kind(), std::io::ErrorKind::PermissionDenied);
    drop(guard);
    fs::write(dir.path().join("x"), b"x").unwrap();
}
