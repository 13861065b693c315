//! Differential against Postfix's own virtual(8): the same messages, sent over SMTP to a Postfix
//! configured like VIRTUAL_README's Example 1 with texthash maps (virtual(8) delivers) and to the
//! virtmail stack over `examples/1-virtual-for-all-mail` (the agent delivers), give equivalent
//! mailboxes. Only the differences listed in docs/COMPATIBILITY.md are normalised away.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use virtmail_crds::resources::MailboxFormat;
use virtmail_tests::fixtures::mailbox;
use virtmail_tests::mail::{self, message};
use virtmail_tests::mailstack::{MailStack, stored_messages};
use virtmail_tests::postfix::{self, Postfix, free_port};
use virtmail_tests::process::wait_for;

const SENDER: &str = "sender@remote.test";
/// A mailbox with a UTF-8 local part, in both configurations (Maildir `utf8/`, uid 5001).
const UTF8_RECIPIENT: &str = "δοκιμή@virtual1.test";
const MAILBOXES: [(&str, &str, MailboxFormat, u32); 2] = [
    ("test1@virtual1.test", "test1", MailboxFormat::Mbox, 5001),
    ("test2@virtual2.test", "test2", MailboxFormat::Maildir, 5002),
];

/// Postfix + virtual(8) configured as in VIRTUAL_README's Example 1 (texthash instead of hash).
struct Virtual8 {
    postfix: Postfix,
    base: PathBuf,
    _dir: tempfile::TempDir,
}

fn start_virtual8() -> Virtual8 {
    let dir = tempfile::Builder::new()
        .prefix("virtmail-virtual8-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = dir.path().join("vhosts");
    std::fs::create_dir(&base).unwrap();
    // As for the agent (mailstack::prepare_layout): recipients create their mailbox and its
    // dotlock in the base.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let port = free_port();
    // Same profile as the agent's stack (DNS off, limits, relay rules), then virtual(8) as the
    // virtual transport with VIRTUAL_README's Example 1 tables.
    let mut config = postfix::profile(
        Path::new("/nonexistent/lmtp.sock"),
        Path::new("/nonexistent/socketmap.sock"),
        51_200_000,
        "+",
    );
    postfix::test_local(&mut config, &dir.path().join("postfix"), port);
    let etc = dir.path().join("postfix/etc");
    let table = |name: &str| format!("texthash:{}", etc.join(name).display());
    config
        .set("virtual_transport", "virtual")
        .set("virtual_mailbox_domains", "virtual1.test virtual2.test")
        .set("virtual_mailbox_base", base.display().to_string())
        .set("virtual_mailbox_maps", table("vmailbox"))
        .set("virtual_minimum_uid", "100")
        .set("virtual_uid_maps", table("vuid"))
        .set("virtual_gid_maps", table("vgid"))
        .set("virtual_alias_maps", table("virtual"));
    config.files = vec![
        (
            "vmailbox".into(),
            format!("test1@virtual1.test test1\ntest2@virtual2.test test2/\n{UTF8_RECIPIENT} utf8/\n"),
        ),
        (
            "vuid".into(),
            format!("test1@virtual1.test 5001\ntest2@virtual2.test 5002\n{UTF8_RECIPIENT} 5001\n"),
        ),
        (
            "vgid".into(),
            format!("test1@virtual1.test 5001\ntest2@virtual2.test 5002\n{UTF8_RECIPIENT} 5001\n"),
        ),
        (
            "virtual".into(),
            "postmaster@virtual1.test test1@virtual1.test\npostmaster@virtual2.test test2@virtual2.test\n"
                .into(),
        ),
    ];
    let postfix = Postfix::start(&dir.path().join("postfix"), port, config);
    Virtual8 {
        postfix,
        base,
        _dir: dir,
    }
}

/// The documented normalisation (docs/COMPATIBILITY.md): the Received header's queue id and
/// time (two Postfix instances) are masked. mbox From_ line dates are already gone (split).
fn normalise(message: &[u8]) -> Vec<u8> {
    let d = mail::delivery(message);
    let received = d.received.expect("a Received header");
    let masked = received
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i > 0 && received.split(' ').nth(i - 1) == Some("id") {
                "QUEUEID;"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let masked = match masked.rsplit_once(';') {
        Some((head, _date)) => format!("{head}; DATE"),
        None => masked,
    };
    let mut out = format!(
        "Return-Path: {}\nX-Original-To: {}\nDelivered-To: {}\nReceived: {masked}\n",
        d.return_path, d.x_original_to, d.delivered_to
    )
    .into_bytes();
    out.extend_from_slice(&d.rest);
    out
}

fn mailbox_contents(base: &Path, path: &str, format: MailboxFormat) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = stored_messages(&base.join(path), format)
        .iter()
        .map(|m| normalise(m))
        .collect();
    all.sort();
    all
}

/// Raw mbox From_ lines, for their shape.
fn from_lines(mbox: &Path) -> Vec<String> {
    std::fs::read_to_string(mbox)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("From "))
        .map(str::to_string)
        .collect()
}

fn send_set(port: u16, set: &[(Vec<&'static str>, Vec<u8>, &'static str)]) {
    for (rcpts, msg, params) in set {
        mail::send(port, SENDER, params, rcpts, msg).assert_accepted();
    }
}

fn message_set() -> Vec<(Vec<&'static str>, Vec<u8>, &'static str)> {
    let mut long = vec![b'x'; 5000];
    long.push(b'\n');
    vec![
        (
            vec!["test1@virtual1.test", "test2@virtual2.test"],
            message(SENDER, "test1@virtual1.test", "plain", "", b"hello\n"),
            "",
        ),
        (
            vec!["test1@virtual1.test", "test2@virtual2.test"],
            message(
                SENDER,
                "test1@virtual1.test",
                "From and dots",
                "",
                b"From here\n>From there\n.\n..\n.x\n",
            ),
            "",
        ),
        (
            vec!["test1@virtual1.test", "test2@virtual2.test"],
            message(
                SENDER,
                "test2@virtual2.test",
                "8bit \u{e9}",
                "",
                b"caf\xc3\xa9 \xe9\n",
            ),
            "BODY=8BITMIME",
        ),
        (
            vec!["test1@virtual1.test", "test2@virtual2.test"],
            message(SENDER, "test2@virtual2.test", "long", "", &long),
            "",
        ),
        (
            vec!["TEST1+Ext@virtual1.test", "test2+a+b@virtual2.test"],
            message(
                SENDER,
                "test1@virtual1.test",
                "extensions and case",
                "",
                b"ext\n",
            ),
            "",
        ),
        (
            vec!["test2@virtual2.test"],
            message(
                "",
                "test2@virtual2.test",
                "null sender",
                "",
                b"bounce-like\n",
            ),
            "",
        ),
    ]
}

fn wait_count(base: &Path, path: &str, format: MailboxFormat, n: usize, who: &str) {
    wait_for(
        &format!("{n} messages in {who}'s {path}"),
        std::time::Duration::from_secs(30),
        || (stored_messages(&base.join(path), format).len() >= n).then_some(()),
    );
}

fn compare(agent_base: &Path, virtual_base: &Path, expected: &[usize; 2]) {
    for ((address, path, format, uid), n) in MAILBOXES.iter().zip(expected) {
        wait_count(agent_base, path, *format, *n, "the agent");
        wait_count(virtual_base, path, *format, *n, "virtual(8)");
        let ours = mailbox_contents(agent_base, path, *format);
        let theirs = mailbox_contents(virtual_base, path, *format);
        assert_eq!(ours.len(), theirs.len(), "{address}: message count");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b),
                "{address}: agent (left) and virtual(8) (right) differ"
            );
        }
        if *n == 0 {
            // virtual(8) never creates a mailbox nobody wrote to (the agent provisions it).
            continue;
        }
        // Same owner and modes of the mailbox and its files.
        for base in [agent_base, virtual_base] {
            let meta = std::fs::metadata(base.join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (*uid, *uid), "{}", base.display());
        }
        let mode = |base: &Path| std::fs::metadata(base.join(path)).unwrap().mode() & 0o7777;
        assert_eq!(
            mode(agent_base),
            mode(virtual_base),
            "{address}: mailbox mode"
        );
    }
    // mbox From_ lines: same shape, `From <sender>  <asctime>`; only the time may differ.
    let ours = from_lines(&agent_base.join("test1"));
    let theirs = from_lines(&virtual_base.join("test1"));
    assert_eq!(ours.len(), theirs.len());
    let shape = |l: &String| l.rsplitn(6, ' ').last().unwrap().to_string();
    assert_eq!(
        ours.iter().map(shape).collect::<Vec<_>>(),
        theirs.iter().map(shape).collect::<Vec<_>>()
    );
}

#[test]
fn agent_and_virtual8_write_equivalent_mailboxes_for_the_same_mail() {
    let stack = MailStack::example("1-virtual-for-all-mail").start();
    let virtual8 = start_virtual8();
    let set = message_set();
    send_set(stack.smtp_port(), &set);
    send_set(virtual8.postfix.port(), &set);
    compare(&stack.base(), &virtual8.base, &[6 - 1, 6]);
}

#[test]
fn alias_expansion_gives_the_same_x_original_to_as_virtual8() {
    let stack = MailStack::example("1-virtual-for-all-mail").start();
    let virtual8 = start_virtual8();
    let set = vec![(
        vec!["postmaster@virtual1.test"],
        message(
            SENDER,
            "postmaster@virtual1.test",
            "alias",
            "",
            b"to the postmaster\n",
        ),
        "",
    )];
    send_set(stack.smtp_port(), &set);
    send_set(virtual8.postfix.port(), &set);
    compare(&stack.base(), &virtual8.base, &[1, 0]);
}

/// Postfix's smtpd takes a UTF-8 envelope from a client that never said SMTPUTF8 and hands it on
/// without SMTPUTF8; virtual(8) delivers it, so the agent, the last hop, must too (a 553 5.6.7
/// would make Postfix bounce the message).
#[test]
fn utf8_envelope_without_smtputf8_is_delivered_as_virtual8_does() {
    let stack = MailStack::example("1-virtual-for-all-mail")
        .resource(
            "utf8.yaml",
            &mailbox(
                "utf8",
                &format!("address: {UTF8_RECIPIENT}, path: utf8/, uid: 5001, gid: 5001"),
            ),
        )
        .start();
    let virtual8 = start_virtual8();
    let utf8_sender = "jörg@remote.test";
    let set = [
        (
            utf8_sender,
            vec!["test1@virtual1.test", "test2@virtual2.test"],
            "utf8 sender",
            "",
        ),
        (SENDER, vec![UTF8_RECIPIENT], "utf8 recipient", ""),
        (utf8_sender, vec![UTF8_RECIPIENT], "both", "BODY=8BITMIME"),
    ];
    for (sender, rcpts, subject, params) in &set {
        let sent = message(sender, rcpts[0], subject, "", b"hi\n");
        for port in [stack.smtp_port(), virtual8.postfix.port()] {
            mail::send(port, sender, params, rcpts, &sent).assert_accepted();
        }
    }
    compare(&stack.base(), &virtual8.base, &[1, 1]);
    wait_count(
        &stack.base(),
        "utf8/",
        MailboxFormat::Maildir,
        2,
        "the agent",
    );
    wait_count(
        &virtual8.base,
        "utf8/",
        MailboxFormat::Maildir,
        2,
        "virtual(8)",
    );
    let ours = mailbox_contents(&stack.base(), "utf8/", MailboxFormat::Maildir);
    let theirs = mailbox_contents(&virtual8.base, "utf8/", MailboxFormat::Maildir);
    assert_eq!(ours.len(), 2);
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(
            String::from_utf8_lossy(a),
            String::from_utf8_lossy(b),
            "{UTF8_RECIPIENT}: agent (left) and virtual(8) (right) differ"
        );
    }
    assert!(
        stack
            .postfix()
            .log_status(UTF8_RECIPIENT, "bounced")
            .is_empty(),
        "nothing bounced"
    );
}
