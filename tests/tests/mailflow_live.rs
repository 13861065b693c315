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

/// RCPT reply code for `rcpt` in a fresh session (RSET, no mail sent).
fn rcpt_code(stack: &MailStack, rcpt: &str) -> u16 {
    let mut smtp = stack.smtp();
    assert_eq!(smtp.mail(SENDER, "").code, 250);
    let code = smtp.rcpt(rcpt).code;
    smtp.quit();
    code
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
    assert_eq!(rcpt_code(&stack, "newbie@example.test"), 550);

    // Add the Mailbox file: accepted at RCPT within 2 s.
    std::fs::write(stack.resources_dir().join("newbie.yaml"), newbie()).unwrap();
    stack.resources_changed();
    let added = Instant::now();
    loop {
        // Each probe is a new SMTP session, but smtpd processes are reused: this also shows
        // that no stale negative answer is cached.
        if rcpt_code(&stack, "newbie@example.test") == 250 {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(2),
            "newbie@example.test still refused {:?} after the file was added",
            added.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let removed = Instant::now();
    loop {
        let mut smtp = stack.smtp();
        smtp.mail(SENDER, "");
        let reply = smtp.rcpt("newbie@example.test");
        smtp.quit();
        if reply.code == 550 {
            assert!(reply.text.starts_with("5.1.1"), "{reply}");
            break;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(2),
            "newbie@example.test still accepted {:?} after the file was removed: {reply}",
            removed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
