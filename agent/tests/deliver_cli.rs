//! The `virtmail-agent deliver` contract: one line per recipient, sysexits exit codes, CRLF
//! input, invalid objects not stopping valid ones.

use std::fs;

use virtmail_tests::delivery::*;
use virtmail_tests::fixtures::mailbox;

fn mailboxes() -> [String; 3] {
    [
        mailbox("alice", "address: alice@example.test"),
        mailbox("bob", "address: bob@example.test, format: Mbox"),
        mailbox("broken", "address: broken@example.test, uid: 0"),
    ]
}

fn world() -> (World, std::path::PathBuf) {
    let w = World::create();
    w.domain_dir();
    let resources = w.resources(&mailboxes());
    (w, resources)
}

#[test]
fn all_delivered_exit_0_with_one_line_per_recipient() {
    let (w, res) = world();
    let (out, err, rc) = w.cli(
        &res,
        &[
            "-f",
            "sender@origin.test",
            "alice@example.test",
            "Bob+x@example.test",
        ],
        b"Subject: hi\r\n\r\nbody\r\n",
    );
    assert_eq!(
        out,
        "alice@example.test 2.0.0 delivered to maildir\nBob+x@example.test 2.0.0 delivered to mailbox\n",
        "{err}"
    );
    assert_eq!(rc, 0);
    let mbox = fs::read(w.base.join("example.test/bob")).unwrap();
    assert!(!mbox.contains(&b'\r'), "CRLF is stored as LF");
    assert!(String::from_utf8_lossy(&mbox).ends_with("Subject: hi\n\nbody\n\n"));
}

#[test]
fn only_unknown_users_exit_67() {
    let (w, res) = world();
    let (out, _, rc) = w.cli(&res, &["nobody@example.test"], MESSAGE);
    assert_eq!(
        out,
        "nobody@example.test 5.1.1 unknown user: \"nobody@example.test\"\n"
    );
    assert_eq!(rc, 67);
}

#[test]
fn other_permanent_failure_exits_69() {
    let (w, res) = world();
    let (out, _, rc) = w.cli(
        &res,
        &["nobody@example.test", "alice@example.test"],
        b"Delivered-To: alice@example.test\n\nloop\n",
    );
    assert!(
        out.contains("alice@example.test 5.4.6 mail forwarding loop"),
        "{out}"
    );
    assert_eq!(rc, 69);
}

#[test]
fn invalid_object_defers_75_and_does_not_stop_valid_recipients() {
    let (w, res) = world();
    let (out, err, rc) = w.cli(
        &res,
        &["broken@example.test", "alice@example.test"],
        MESSAGE,
    );
    assert_eq!(
        out,
        "broken@example.test 4.3.5 mail system configuration error\nalice@example.test 2.0.0 delivered to maildir\n"
    );
    assert!(err.contains("InvalidOwner"), "{err}");
    assert_eq!(rc, 75);
    assert_eq!(names(&w.base.join("example.test/alice/new")).len(), 1);
}

#[test]
fn null_sender_and_original_recipient_options() {
    let (w, res) = world();
    let (_, _, rc) = w.cli(
        &res,
        &[
            "-f",
            "<>",
            "--original-recipient",
            "list@example.test",
            "bob@example.test",
        ],
        MESSAGE,
    );
    assert_eq!(rc, 0);
    let text = fs::read_to_string(w.base.join("example.test/bob")).unwrap();
    assert!(text.starts_with("From MAILER-DAEMON  "));
    assert!(text.contains(
        "\nReturn-Path: <>\nX-Original-To: list@example.test\nDelivered-To: bob@example.test\n"
    ));
}

#[test]
fn v21_from_line_date_is_local_time_from_tz() {
    assert!(
        std::path::Path::new("/usr/share/zoneinfo/Asia/Kolkata").exists(),
        "this test needs the time zone database (Debian package tzdata)"
    );
    let (w, res) = world();
    let date_with = |tz: &str| {
        let (_, err, rc) = w.cli_env(&res, &["bob@example.test"], MESSAGE, &[("TZ", tz)]);
        assert_eq!(rc, 0, "{err}");
        let text = fs::read_to_string(w.base.join("example.test/bob")).unwrap();
        let line = text
            .lines()
            .rfind(|l| l.starts_with("From "))
            .unwrap()
            .to_string();
        let date = line.split_once("  ").unwrap().1.to_string();
        jiff::civil::DateTime::strptime("%a %b %e %H:%M:%S %Y", &date)
            .unwrap_or_else(|e| panic!("{date:?} is not asctime: {e}"))
    };
    let utc = date_with("UTC");
    let india = date_with("Asia/Kolkata");
    let offset = utc.duration_until(india).as_secs();
    assert!(
        (5 * 3600 + 1800..5 * 3600 + 1800 + 10).contains(&offset),
        "UTC {utc} vs Asia/Kolkata {india}"
    );
}
