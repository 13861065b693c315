//! The built-in autoresponder (RFC 3834) through real Postfix and Dovecot: a stack whose
//! MailServer declares `outbound.relayHost` answers mail to a Mailbox with an `autoreply`; its
//! Postfix relays the reply to a second stack, the "remote" domain, where it is stored and read
//! back through Dovecot IMAP. Mail that must not be answered is delivered without a reply.

use std::time::Duration;

use virtmail_tests::fixtures::{mail_domain, mail_server, mailbox, resource, stream};
use virtmail_tests::mail::{self, message};
use virtmail_tests::mailstack::MailStack;
use virtmail_tests::process::wait_for;

const AWAY: &str = "user@domain.test";
const DESK: &str = "desk@domain.test";
const ALICE: &str = "alice@remote.test";
const CAROL: &str = "carol@remote.test";

fn remote() -> MailStack {
    MailStack::resources(&stream([
        mail_server("remote", ""),
        mail_domain("remote", "remote.test", ALICE, 5003, ""),
        mailbox("alice", &format!("address: {ALICE}")),
        mailbox("carol", &format!("address: {CAROL}")),
    ]))
    // Another name than the answering stack's Postfix, or its smtp client would see mail
    // "loop back to myself".
    .postfix_param("myhostname", "mx.remote.test")
    .start()
}

fn away(relay_port: u16) -> MailStack {
    MailStack::resources(&stream([
        mail_server(
            "mail",
            &format!("outbound: {{relayHost: '[127.0.0.1]:{relay_port}'}}"),
        ),
        away_domain(),
        resource(
            "Mailbox",
            "user",
            &format!(
                "\n  address: {AWAY}\n  format: Mbox\n  autoreply:\n    subject: Away\n    body: |\n      I am away until Monday.\n      .\n      Mail is read then."
            ),
        ),
        mailbox(
            "desk",
            &format!("address: {DESK}, format: Maildir, autoreply: {{body: Closed today.}}"),
        ),
    ]))
    .start()
}

fn away_domain() -> String {
    mail_domain("domain", "domain.test", AWAY, 5000, "")
}

/// Wait until the agent has logged `line` `n` times.
fn wait_log(stack: &MailStack, line: &str, n: usize) {
    wait_for(
        &format!("{n}× {line:?} in the agent's log"),
        Duration::from_secs(30),
        || (stack.agent_log().matches(line).count() >= n).then_some(()),
    );
}

#[test]
fn a_reply_goes_once_per_sender_with_rfc3834_headers_and_a_null_sender() {
    let remote = remote();
    let stack = away(remote.smtp_port());

    let first = message(ALICE, AWAY, "Lunch?", "", b"Lunch on Friday?\n");
    stack.send_and_assert_delivered(ALICE, AWAY, AWAY, AWAY, &first);

    // The reply, as stored by the remote side (after its Postfix and agent) and read over IMAP.
    let replies = remote.wait_for_messages(ALICE, 1);
    let reply = &replies[0];
    let d = mail::delivery(reply);
    assert_eq!(d.return_path, "<>", "null envelope sender");
    assert_eq!(d.delivered_to, ALICE);
    let original_id = mail::header(&first, "Message-ID").expect("Message-ID");
    assert_eq!(
        mail::header(reply, "Auto-Submitted").as_deref(),
        Some("auto-replied")
    );
    assert_eq!(
        mail::header(reply, "In-Reply-To"),
        Some(original_id.clone())
    );
    assert_eq!(mail::header(reply, "References"), Some(original_id));
    assert_eq!(mail::header(reply, "Subject").as_deref(), Some("Away"));
    assert_eq!(
        mail::header(reply, "From").as_deref(),
        Some("<user@domain.test>")
    );
    assert_eq!(
        mail::header(reply, "To").as_deref(),
        Some("<alice@remote.test>")
    );
    let text = String::from_utf8_lossy(reply);
    assert!(
        text.ends_with("\n\nI am away until Monday.\n.\nMail is read then.\n"),
        "{text}"
    );
    let fetched = remote.imap(ALICE);
    assert!(
        fetched.messages.contains(&mail::crlf(reply)),
        "read back over IMAP"
    );

    // The same sender again within the interval: delivered, not answered.
    let second = message(ALICE, AWAY, "Lunch? (2)", "", b"Still lunch?\n");
    stack.send_and_assert_delivered(ALICE, AWAY, AWAY, AWAY, &second);
    wait_log(
        &stack,
        "autoreply not sent: sender answered within the interval",
        1,
    );

    // Another sender is answered; by then the first sender still has exactly one reply.
    let third = message(CAROL, AWAY, "Hello", "", b"Hi\n");
    stack.send(CAROL, &[AWAY], &third).assert_accepted();
    remote.wait_for_messages(CAROL, 1);
    stack.wait_queue_empty();
    remote.wait_queue_empty();
    assert_eq!(
        remote.stored(ALICE).len(),
        1,
        "one reply per sender per interval"
    );

    // The state is on the volume, owned by the mailbox's uid, and names no address.
    let state = stack.base().join("domain.test/.user.virtmail-autoreply");
    let meta = std::fs::metadata(&state).expect("autoreply state");
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (5000, 0o600));
    let content = std::fs::read_to_string(&state).expect("read state");
    assert_eq!(content.lines().count(), 2, "{content}");
    assert!(!content.contains('@'), "{content}");

    // A Maildir keeps its state inside, where Dovecot does not take it for mail; each mailbox
    // answers a sender on its own.
    let to_desk = message(ALICE, DESK, "Opening hours", "", b"Open today?\n");
    stack.send_and_assert_delivered(ALICE, DESK, DESK, DESK, &to_desk);
    wait_for("the desk's reply", Duration::from_secs(30), || {
        remote
            .stored(ALICE)
            .iter()
            .any(|m| mail::header(m, "Subject").as_deref() == Some("Auto: Opening hours"))
            .then_some(())
    });
    let state = stack.base().join("domain.test/desk/.virtmail-autoreply");
    assert_eq!(std::fs::metadata(&state).expect("state").uid(), 5000);
    assert_eq!(
        stack.imap(DESK).messages.len(),
        1,
        "the state is not a message"
    );
}

#[test]
fn automatic_bulk_list_and_blind_copies_are_delivered_but_never_answered() {
    let remote = remote();
    let stack = away(remote.smtp_port());
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            CAROL,
            AWAY,
            "Auto-Submitted: auto-generated\n",
            "Auto-Submitted",
        ),
        (
            CAROL,
            AWAY,
            "Precedence: bulk\n",
            "Precedence bulk/list/junk",
        ),
        (
            CAROL,
            AWAY,
            "List-Id: <news.remote.test>\n",
            "mailing list headers",
        ),
        (CAROL, "someone@remote.test", "", "mailbox not in To or Cc"),
        ("", AWAY, "", "null sender"),
    ];
    for (n, (sender, to, extra, why)) in cases.iter().enumerate() {
        let sent = message(sender, to, "no reply", extra, b"body\n");
        stack.send(sender, &[AWAY], &sent).assert_accepted();
        let stored = stack.wait_for_messages(AWAY, n + 1);
        assert!(
            stored
                .iter()
                .any(|m| mail::delivery(m).rest == mail::mboxo_quoted(&sent)),
            "{why}: the original is delivered"
        );
        wait_log(&stack, &format!("autoreply not sent: {why}"), 1);
    }
    let owner = message("owner-news@remote.test", AWAY, "list owner", "", b"x\n");
    stack
        .send("owner-news@remote.test", &[AWAY], &owner)
        .assert_accepted();
    wait_log(&stack, "autoreply not sent: system sender", 1);
    stack.wait_queue_empty();
    remote.wait_queue_empty();
    assert!(remote.stored(CAROL).is_empty(), "no reply was sent");
}

#[test]
fn without_an_outbound_path_the_autoreply_is_refused_and_mail_still_delivered() {
    let stack = MailStack::resources(&stream([
        mail_server("mail", ""),
        away_domain(),
        mailbox(
            "user",
            &format!("address: {AWAY}, autoreply: {{body: away}}"),
        ),
    ]))
    .start();
    assert!(
        stack.directory().mailboxes[AWAY].autoreply.is_none(),
        "refused by the compiler"
    );
    let sent = message(ALICE, AWAY, "hello", "", b"hi\n");
    stack.send_and_assert_delivered(ALICE, AWAY, AWAY, AWAY, &sent);
    stack.wait_queue_empty();
    assert!(!stack.agent_log().contains("autoreply sent"));
}
