//! Live directory changes while Postfix runs: a new Mailbox file is accepted at RCPT within 2 s
//! with no Postfix reload; a removed one is rejected at RCPT and its mail stays on disk.

use std::time::{Duration, Instant};

use virtmail_tests::fixtures::{mail_domain, mail_server, mailbox, stream};
use virtmail_tests::mail::{self, message};
use virtmail_tests::mailstack::MailStack;

const SENDER: &str = "sender@remote.test";

fn resources() -> String {
    stream([
        mail_server("mail", ""),
        mail_domain("example", "example.test", "alice@example.test", 5000, ""),
        mailbox("alice", "address: alice@example.test, format: Maildir"),
    ])
}

fn newbie() -> String {
    mailbox("newbie", "address: newbie@example.test, format: Maildir")
}

/// The RCPT reply for `rcpt` in a fresh session (no mail sent).
fn rcpt_reply(stack: &MailStack, rcpt: &str) -> mail::Reply {
    let mut smtp = stack.smtp();
    assert_eq!(smtp.mail(SENDER, "").code, 250);
    let reply = smtp.rcpt(rcpt);
    smtp.quit();
    reply
}

/// Probe `rcpt` every 50 ms until Postfix answers `code` at RCPT; that reply. Each probe is a
/// new SMTP session, but smtpd processes are reused: this also shows that no stale answer is
/// cached. Panics when it takes 2 s, naming the `change` that should have taken effect.
fn wait_for_rcpt_code(stack: &MailStack, rcpt: &str, code: u16, change: &str) -> mail::Reply {
    let since = Instant::now();
    loop {
        let reply = rcpt_reply(stack, rcpt);
        if reply.code == code {
            return reply;
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "{rcpt} still answered {reply} {:?} after {change}",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn master_pid(stack: &MailStack) -> String {
    std::fs::read_to_string(stack.postfix().config_dir().join("../queue/pid/master.pid"))
        .expect("master.pid")
        .trim()
        .to_string()
}

#[test]
fn added_mailbox_is_accepted_within_2s_and_removed_one_rejected_with_its_mail_kept() {
    let stack = MailStack::resources(&resources()).start();
    let pid = master_pid(&stack);
    let config = std::fs::read(stack.postfix().config_dir().join("main.cf")).unwrap();
    assert_eq!(rcpt_reply(&stack, "newbie@example.test").code, 550);

    // Add the Mailbox file: accepted at RCPT within 2 s.
    std::fs::write(stack.resources_dir().join("newbie.yaml"), newbie()).unwrap();
    stack.resources_changed();
    wait_for_rcpt_code(&stack, "newbie@example.test", 250, "the file was added");
    let sent = message(SENDER, "newbie@example.test", "welcome", "", b"hi newbie\n");
    stack.send_and_assert_delivered(
        SENDER,
        "newbie@example.test",
        "newbie@example.test",
        "newbie@example.test",
        &sent,
    );
    let (maildir, _) = stack.mailbox("newbie@example.test");

    // Remove it: refused at RCPT (550 5.1.1) within 2 s; the Maildir and its mail stay.
    std::fs::remove_file(stack.resources_dir().join("newbie.yaml")).unwrap();
    let refused = wait_for_rcpt_code(&stack, "newbie@example.test", 550, "the file was removed");
    assert!(refused.text.starts_with("5.1.1"), "{refused}");
    let kept = virtmail_tests::mailstack::stored_messages(
        &maildir,
        virtmail_crds::resources::MailboxFormat::Maildir,
    );
    assert_eq!(kept.len(), 1, "the removed mailbox keeps its mail");
    assert_eq!(mail::delivery(&kept[0]).rest, mail::lf(&sent));

    // Postfix was neither reloaded nor reconfigured.
    assert_eq!(master_pid(&stack), pid);
    assert_eq!(
        std::fs::read(stack.postfix().config_dir().join("main.cf")).unwrap(),
        config
    );
    assert!(!stack.postfix().log().contains("reload"));
}
