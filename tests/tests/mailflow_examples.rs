//! VIRTUAL_README's Examples 1–5 (`examples/`) through a real Postfix in front of the agent, each copy
//! read back through Dovecot IMAP byte for byte.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use virtmail_tests::mail::message;
use virtmail_tests::mailstack::MailStack;
use virtmail_tests::process::wait_for;
use virtmail_tests::workspace_root;

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

#[test]
fn example2_delivers_to_shared_uid_5000_mbox_and_maildir() {
    let stack = MailStack::example("2-coexisting-with-local").start();
    for address in ["test1@virtual1.test", "test2@virtual2.test"] {
        let sent = message(SENDER, address, "example 2", "", b"one line\n");
        stack.send_and_assert_delivered(SENDER, address, address, address, &sent);
        let (path, _) = stack.mailbox(address);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (5000, 5000), "{}", path.display());
    }
}

#[test]
fn example3_delivers_to_every_user_of_the_selected_domains() {
    let stack = MailStack::example("3-many-virtual-users").start();
    let directory = stack.directory();
    let users: Vec<String> = directory.mailboxes.keys().cloned().collect();
    assert!(users.len() >= 10, "Example 3 has many users: {users:?}");
    // One message to every user in one SMTP transaction: Postfix hands them to the agent in
    // LMTP transactions of up to 50 recipients; each copy gets its own Delivered-To.
    let rcpts: Vec<&str> = users.iter().map(String::as_str).collect();
    let sent = message(SENDER, "team@virtual1.test", "example 3", "", b"to all\n");
    stack.send(SENDER, &rcpts, &sent).assert_accepted();
    for user in &users {
        stack.assert_delivered(user, SENDER, user, user, &sent);
    }
    // Default paths: <domain>/<local>/ (Maildir, the domain default).
    assert!(stack.base().join("virtual1.test/alice/new").is_dir());
}

#[test]
fn example4_forwards_the_old_address_to_the_new_mailbox() {
    let stack = MailStack::example("4-forwarding-old-address").start();
    let sent = message(
        SENDER,
        "old_user@old.test",
        "example 4",
        "",
        b"for the old address\n",
    );
    // virtual(8) writes the address before alias expansion as X-Original-To (virtual(8) V21 item 3).
    stack.send_and_assert_delivered(
        SENDER,
        "old_user@old.test",
        "new_user@new.test",
        "new_user@new.test",
        &sent,
    );
    // postmaster@old.test is the implied alias to the domain's postmaster.
    let sent = message(SENDER, "postmaster@old.test", "to postmaster", "", b"hi\n");
    stack.send_and_assert_delivered(
        SENDER,
        "postmaster@old.test",
        "new_user@new.test",
        "new_user@new.test",
        &sent,
    );
}

#[test]
fn example5_keeps_a_copy_and_hands_one_to_the_autoreply_transport() {
    let capture = workspace_root().join("tests/support/capture.sh");
    let stack = MailStack::example("5-autoreply-copy")
        // autoreply.domain.test is not virtmail's: Postfix routes it by its own transport_maps,
        // here to a pipe(8) transport that stores what it gets.
        .postfix_param("transport_maps", "texthash:@ETC@/transport")
        .postfix_file("transport", "autoreply.domain.test autoreply:\n")
        .postfix_service(&format!(
            "autoreply/unix = autoreply unix - n n - - pipe user=nobody argv={} @ROOT@/autoreply ${{recipient}}",
            capture.display()
        ))
        .start();
    let out = stack.root().join("autoreply");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o1777)).unwrap();

    let sent = message(
        SENDER,
        "user@domain.test",
        "example 5",
        "",
        b"are you there?\n",
    );
    stack.send_and_assert_delivered(
        SENDER,
        "user@domain.test",
        "user@domain.test",
        "user@domain.test",
        &sent,
    );
    let copy = wait_for(
        "the autoreply transport's copy",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(&out)
                .ok()?
                .flatten()
                .find(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("user@autoreply.domain.test.")
                })
                .map(|e| std::fs::read(e.path()).unwrap())
        },
    );
    assert!(
        copy.ends_with(&virtmail_tests::mail::lf(&sent)),
        "the autoreply copy carries the message:\n{}",
        String::from_utf8_lossy(&copy)
    );
    // Exactly one copy in the mailbox: listing the address itself is not a loop.
    assert_eq!(stack.stored("user@domain.test").len(), 1);
}
