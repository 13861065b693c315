//! Standalone `serve --resources` provisions the mailbox layout itself (DESIGN §3: "a cluster
//! and a laptop behave the same"; §4 Provisioning), so mail is deliverable on an empty base with
//! no administrator preparation.

use std::os::unix::fs::MetadataExt;

use virtmail_tests::mail::message;
use virtmail_tests::mailstack::MailStack;

const SENDER: &str = "sender@remote.test";

#[test]
fn standalone_agent_provisions_mailboxes_on_an_empty_base() {
    let stack = MailStack::example("4-forwarding-old-address")
        .admin_layout(false)
        .start();
    let sent = message(SENDER, "new_user@new.test", "no preparation", "", b"hi\n");
    stack
        .send(SENDER, &["new_user@new.test"], &sent)
        .assert_accepted();
    stack.assert_delivered(
        "new_user@new.test",
        SENDER,
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
