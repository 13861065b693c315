//! Standalone `serve --resources` provisions the mailbox layout itself (docs/ARCHITECTURE.md: "a cluster
//! and a laptop behave the same"; §4 Provisioning), so mail is deliverable on an empty base with
//! no administrator preparation.

use std::os::unix::fs::MetadataExt;

use virtmail_tests::fixtures::{mail_domain, mail_server, mailbox, stream};
use virtmail_tests::mail::message;
use virtmail_tests::mailstack::MailStack;

const SENDER: &str = "sender@remote.test";

#[test]
fn standalone_agent_provisions_mailboxes_on_an_empty_base() {
    let stack = MailStack::example("4-forwarding-old-address")
        .admin_layout(false)
        .start();
    let sent = message(SENDER, "new_user@new.test", "no preparation", "", b"hi\n");
    stack.send_and_assert_delivered(
        SENDER,
        "new_user@new.test",
        "new_user@new.test",
        "new_user@new.test",
        &sent,
    );
    let (maildir, _) = stack.mailbox("new_user@new.test");
    let meta = std::fs::metadata(&maildir).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (5000, 5000, 0o700)
    );
}

/// A Maildir and a dotlocked mbox in one domain directory, on an empty base: the directory's
/// mode comes from both (1777 for the mbox's dotlock), whichever is provisioned first, and mail
/// to both lands and reads back through Dovecot.
#[test]
fn maildir_and_dotlocked_mbox_share_a_domain_directory() {
    let stack = MailStack::resources(&stream([
        mail_server("mail", ""),
        mail_domain("d", "mixed.test", "alice@mixed.test", 5000, ""),
        mailbox("alice", "address: alice@mixed.test, format: Maildir"),
        mailbox(
            "bob",
            "address: bob@mixed.test, format: Mbox, uid: 5001, gid: 5001",
        ),
    ]))
    .admin_layout(false)
    .start();
    for rcpt in ["alice@mixed.test", "bob@mixed.test"] {
        let sent = message(SENDER, rcpt, "mixed directory", "", b"hi\n");
        stack.send_and_assert_delivered(SENDER, rcpt, rcpt, rcpt, &sent);
    }
    let domain = std::fs::metadata(stack.base().join("mixed.test")).unwrap();
    assert_eq!(domain.mode() & 0o7777, 0o1777);
    assert!(
        !stack.agent_log().contains("DotlockNotPossible"),
        "{}",
        stack.agent_log()
    );
}
