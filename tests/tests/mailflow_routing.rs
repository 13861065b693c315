//! Recipient routing through Postfix and the agent's socketmap: unknown users rejected at RCPT,
//! address extensions, catch-all, suspended mailboxes, mixed known/unknown recipients.

use std::time::Duration;

use virtmail_tests::fixtures::{alice_and_bob, mail_alias, mail_domain, mailbox, stream};
use virtmail_tests::mail::message;
use virtmail_tests::mailstack::MailStack;
use virtmail_tests::process::wait_for;

const SENDER: &str = "sender@remote.test";

/// alice (Maildir) and bob (mbox) at example.test; catchall.test, whose catch-all is info.
fn resources() -> Vec<String> {
    let mut manifests = alice_and_bob("");
    manifests.push(mail_domain(
        "catchall",
        "catchall.test",
        "info@catchall.test",
        5001,
        "catchAll: info",
    ));
    manifests.push(mailbox("info", "address: info@catchall.test"));
    manifests
}

fn carol(suspended: bool) -> String {
    mailbox(
        "carol",
        &format!("address: carol@example.test, format: Maildir, suspended: {suspended}"),
    )
}

#[test]
fn unknown_user_is_rejected_at_rcpt_while_the_other_recipients_get_their_copies() {
    let stack = MailStack::resources(&stream(resources())).start();
    let rcpts = [
        "alice@example.test",
        "nobody@example.test",
        "bob@example.test",
    ];
    let sent = message(SENDER, "alice@example.test", "three rcpts", "", b"body\n");
    let result = virtmail_tests::mail::send(stack.smtp_port(), SENDER, "", &rcpts, &sent);
    assert_eq!(result.rcpt[0].code, 250, "{}", result.rcpt[0]);
    assert_eq!(result.rcpt[2].code, 250, "{}", result.rcpt[2]);
    let unknown = &result.rcpt[1];
    assert_eq!(unknown.code, 550, "{unknown}");
    assert!(
        unknown.text.starts_with("5.1.1 <nobody@example.test>")
            && unknown
                .text
                .contains("User unknown in virtual mailbox table"),
        "{unknown}"
    );
    assert_eq!(result.data.as_ref().map(|r| r.code), Some(250));
    for address in ["alice@example.test", "bob@example.test"] {
        stack.assert_delivered(address, SENDER, address, address, &sent);
    }
    // The unknown user never reached the agent: nothing was queued for it.
    stack.wait_queue_empty();
    assert!(
        stack
            .postfix()
            .log_status("nobody@example.test", "bounced")
            .is_empty()
    );
    assert!(!stack.base().join("example.test/nobody").exists());
}

#[test]
fn extension_goes_to_the_user_and_unknown_locals_to_the_catch_all() {
    let stack = MailStack::resources(&stream(resources())).start();
    let sent = message(
        SENDER,
        "alice+lists@example.test",
        "ext",
        "",
        b"extension\n",
    );
    // virtual(8): X-Original-To and Delivered-To keep the extension (virtual(8) V21).
    stack.send_and_assert_delivered(
        SENDER,
        "alice+lists@example.test",
        "alice@example.test",
        "alice+lists@example.test",
        &sent,
    );

    let sent = message(
        SENDER,
        "whoever@catchall.test",
        "catch-all",
        "",
        b"catch me\n",
    );
    stack.send_and_assert_delivered(
        SENDER,
        "whoever@catchall.test",
        "info@catchall.test",
        "whoever@catchall.test",
        &sent,
    );
    // Unknown users of a domain without catch-all are still refused.
    let r = virtmail_tests::mail::send(stack.smtp_port(), SENDER, "", &["x@example.test"], &sent);
    assert_eq!(r.rcpt[0].code, 550, "{}", r.rcpt[0]);
}

#[test]
fn suspended_mailbox_is_deferred_by_postfix_and_delivered_after_resume() {
    let stack = MailStack::resources(&stream(resources()))
        .resource("carol.yaml", &carol(true))
        .start();
    let sent = message(
        SENDER,
        "carol@example.test",
        "while suspended",
        "",
        b"wait\n",
    );
    stack
        .send(SENDER, &["carol@example.test"], &sent)
        .assert_accepted();
    wait_for(
        "Postfix to defer carol's mail",
        Duration::from_secs(20),
        || {
            let deferred = stack.postfix().log_status("carol@example.test", "deferred");
            (!deferred.is_empty()).then_some(deferred)
        },
    );
    assert!(stack.stored("carol@example.test").is_empty());
    assert!(
        !stack.postfix().queue_is_empty(),
        "carol's mail waits in the queue"
    );

    std::fs::write(stack.resources_dir().join("carol.yaml"), carol(false)).unwrap();
    stack.resources_changed();
    // Give the agent its reload (~0.5 s), then retry the queue now.
    std::thread::sleep(Duration::from_millis(1500));
    stack.postfix().flush();
    stack.assert_delivered(
        "carol@example.test",
        SENDER,
        "carol@example.test",
        "carol@example.test",
        &sent,
    );
    stack.wait_queue_empty();
}

fn patterns() -> [String; 2] {
    [
        mail_alias(
            "sales",
            "address: '@catchall.test', pattern: 'sales-[a-z]+', to: [alice@example.test]",
        ),
        mail_alias(
            "broken",
            "address: '@catchall.test', pattern: 'support-(', to: [bob@example.test]",
        ),
    ]
}

/// A pattern alias through Postfix's socketmap lookups: a matching local part (any case, with an
/// extension) goes to its target with X-Original-To as sent; an exact mailbox still wins, and
/// what no pattern matches falls to the domain's catch-all. An invalid pattern is not served.
#[test]
fn pattern_aliases_route_between_exact_addresses_and_the_catch_all() {
    let stack = MailStack::resources(&stream(resources().into_iter().chain(patterns()))).start();
    for rcpt in ["sales-eu@catchall.test", "Sales-Asia+x@catchall.test"] {
        let sent = message(SENDER, rcpt, "pattern", "", b"to sales\n");
        stack.send_and_assert_delivered(
            SENDER,
            rcpt,
            "alice@example.test",
            "alice@example.test",
            &sent,
        );
    }
    let exact = message(SENDER, "info@catchall.test", "exact", "", b"to info\n");
    stack.send_and_assert_delivered(
        SENDER,
        "info@catchall.test",
        "info@catchall.test",
        "info@catchall.test",
        &exact,
    );
    // Not matched (anchored), and the invalid pattern serves nothing: the catch-all gets both.
    for rcpt in ["xsales-eu@catchall.test", "support-1@catchall.test"] {
        let sent = message(SENDER, rcpt, "catch-all", "", b"to the catch-all\n");
        stack.send_and_assert_delivered(SENDER, rcpt, "info@catchall.test", rcpt, &sent);
    }
    assert!(stack.stored("bob@example.test").is_empty());
}
