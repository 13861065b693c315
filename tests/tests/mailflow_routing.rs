//! Recipient routing through Postfix and the agent's socketmap: unknown users rejected at RCPT,
//! address extensions, catch-all, suspended mailboxes, mixed known/unknown recipients.

use std::time::Duration;

use virtmail_tests::mail::message;
use virtmail_tests::mailstack::MailStack;
use virtmail_tests::process::wait_for;

const SENDER: &str = "sender@remote.test";

const RESOURCES: &str = "\
apiVersion: virtmail.io/v1alpha1
kind: MailServer
metadata: {name: mail}
spec: {}
---
apiVersion: virtmail.io/v1alpha1
kind: MailDomain
metadata: {name: example}
spec: {domain: example.test, postmaster: alice@example.test, defaults: {uid: 5000, gid: 5000}}
---
apiVersion: virtmail.io/v1alpha1
kind: MailDomain
metadata: {name: catchall}
spec: {domain: catchall.test, postmaster: info@catchall.test, catchAll: info, defaults: {uid: 5001, gid: 5001}}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: alice}
spec: {address: alice@example.test, format: Maildir}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: bob}
spec: {address: bob@example.test, format: Mbox}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: info}
spec: {address: info@catchall.test}
";

const CAROL: &str = "\
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: carol}
spec: {address: carol@example.test, format: Maildir, suspended: true}
";

#[test]
fn unknown_user_is_rejected_at_rcpt_while_the_other_recipients_get_their_copies() {
    let stack = MailStack::resources(RESOURCES).start();
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
    let stack = MailStack::resources(RESOURCES).start();
    let sent = message(
        SENDER,
        "alice+lists@example.test",
        "ext",
        "",
        b"extension\n",
    );
    stack
        .send(SENDER, &["alice+lists@example.test"], &sent)
        .assert_accepted();
    // virtual(8): X-Original-To and Delivered-To keep the extension (virtual(8) V21).
    stack.assert_delivered(
        "alice@example.test",
        SENDER,
        "alice+lists@example.test",
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
    stack
        .send(SENDER, &["whoever@catchall.test"], &sent)
        .assert_accepted();
    stack.assert_delivered(
        "info@catchall.test",
        SENDER,
        "whoever@catchall.test",
        "whoever@catchall.test",
        &sent,
    );
    // Unknown users of a domain without catch-all are still refused.
    let r = virtmail_tests::mail::send(stack.smtp_port(), SENDER, "", &["x@example.test"], &sent);
    assert_eq!(r.rcpt[0].code, 550, "{}", r.rcpt[0]);
}

#[test]
fn suspended_mailbox_is_deferred_by_postfix_and_delivered_after_resume() {
    let stack = MailStack::resources(RESOURCES)
        .resource("carol.yaml", CAROL)
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

    std::fs::write(
        stack.resources_dir().join("carol.yaml"),
        CAROL.replace("suspended: true", "suspended: false"),
    )
    .unwrap();
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

const PATTERNS: &str = "\
---
apiVersion: virtmail.io/v1alpha1
kind: MailAlias
metadata: {name: sales}
spec: {address: '@catchall.test', pattern: 'sales-[a-z]+', to: [alice@example.test]}
---
apiVersion: virtmail.io/v1alpha1
kind: MailAlias
metadata: {name: broken}
spec: {address: '@catchall.test', pattern: 'support-(', to: [bob@example.test]}
";

/// A pattern alias through Postfix's socketmap lookups: a matching local part (any case, with an
/// extension) goes to its target with X-Original-To as sent; an exact mailbox still wins, and
/// what no pattern matches falls to the domain's catch-all. An invalid pattern is not served.
#[test]
fn pattern_aliases_route_between_exact_addresses_and_the_catch_all() {
    let stack = MailStack::resources(&format!("{RESOURCES}{PATTERNS}")).start();
    for rcpt in ["sales-eu@catchall.test", "Sales-Asia+x@catchall.test"] {
        let sent = message(SENDER, rcpt, "pattern", "", b"to sales\n");
        stack.send(SENDER, &[rcpt], &sent).assert_accepted();
        stack.assert_delivered(
            "alice@example.test",
            SENDER,
            rcpt,
            "alice@example.test",
            &sent,
        );
    }
    let exact = message(SENDER, "info@catchall.test", "exact", "", b"to info\n");
    stack
        .send(SENDER, &["info@catchall.test"], &exact)
        .assert_accepted();
    stack.assert_delivered(
        "info@catchall.test",
        SENDER,
        "info@catchall.test",
        "info@catchall.test",
        &exact,
    );
    // Not matched (anchored), and the invalid pattern serves nothing: the catch-all gets both.
    for rcpt in ["xsales-eu@catchall.test", "support-1@catchall.test"] {
        let sent = message(SENDER, rcpt, "catch-all", "", b"to the catch-all\n");
        stack.send(SENDER, &[rcpt], &sent).assert_accepted();
        stack.assert_delivered("info@catchall.test", SENDER, rcpt, rcpt, &sent);
    }
    assert!(stack.stored("bob@example.test").is_empty());
}
