//! The seed's Examples 1–5 (`examples/`) through a real Postfix in front of the agent, each copy
//! read back through Dovecot IMAP byte for byte.

use std::os::unix::fs::MetadataExt;

use virtmail_tests::mail::message;
use virtmail_tests::mailstack::MailStack;

const SENDER: &str = "sender@remote.test";

#[test]
fn example1_delivers_mbox_and_maildir_each_owned_by_its_uid() {
    let stack = MailStack::example("1-virtual-for-all-mail").start();
    let sent = message(
        SENDER,
        "test1@virtual1.test",
        "example 1",
        "",
        b"hello\nFrom the body\n.a dot line\n",
    );
    stack
        .send(
            SENDER,
            &["test1@virtual1.test", "test2@virtual2.test"],
            &sent,
        )
        .assert_accepted();
    for (address, uid) in [("test1@virtual1.test", 5001), ("test2@virtual2.test", 5002)] {
        stack.assert_delivered(address, SENDER, address, address, &sent);
        let (path, _) = stack.mailbox(address);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, uid), "{}", path.display());
    }
    // The mbox is a file at the base (no trailing slash), the Maildir a directory (trailing slash).
    assert!(stack.base().join("test1").is_file());
    assert!(stack.base().join("test2/new").is_dir());
}
