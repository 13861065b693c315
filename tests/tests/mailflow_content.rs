//! Message content through Postfix and the agent, read back through Dovecot IMAP byte for byte:
//! 8-bit and SMTPUTF8 mail, lines starting with `From ` and `.`, over-long lines, a message
//! without a final newline (through `virtmail-agent deliver`: SMTP cannot carry one), 20 MB.

use virtmail_tests::delivery::deliver_command;
use virtmail_tests::fixtures::{alice_and_bob, stream};
use virtmail_tests::mail::{self, message};
use virtmail_tests::mailstack::MailStack;
use virtmail_tests::process::{binary, output_with_input};

const SENDER: &str = "sender@remote.test";
/// One Maildir and one mbox recipient for every message.
const RCPTS: [&str; 2] = ["alice@example.test", "bob@example.test"];

/// Room for the 20 MB message in the mbox.
fn resources() -> String {
    stream(alice_and_bob("mailboxSizeLimit: 60000000"))
}

fn deliver_both(stack: &MailStack, sender: &str, params: &str, sent: &[u8]) {
    let result = mail::send(stack.smtp_port(), sender, params, &RCPTS, sent);
    result.assert_accepted();
    for rcpt in RCPTS {
        stack.assert_delivered(rcpt, sender, rcpt, rcpt, sent);
    }
}

#[test]
fn eight_bit_body_and_headers_arrive_byte_for_byte() {
    let stack = MailStack::resources(&resources()).start();
    let mut body = b"caf\xc3\xa9 in UTF-8, caf\xe9 in Latin-1, a NUL-free \x80\xff mix\n".to_vec();
    body.extend_from_slice(b"tab\tand trailing spaces   \n");
    let sent = message(
        SENDER,
        RCPTS[0],
        "8bit über",
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n",
        &body,
    );
    deliver_both(&stack, SENDER, "BODY=8BITMIME", &sent);
}

#[test]
fn smtputf8_sender_and_headers_arrive_byte_for_byte() {
    let stack = MailStack::resources(&resources()).start();
    let sender = "δοκιμή@παράδειγμα.test";
    let sent = message(
        sender,
        RCPTS[0],
        "Grüße from ünïcödé",
        "",
        "Ελληνικά και 日本語\n".as_bytes(),
    );
    let ehlo = stack.smtp();
    assert!(
        ehlo.ehlo.as_ref().unwrap().text.contains("SMTPUTF8"),
        "Postfix announces SMTPUTF8"
    );
    ehlo.quit();
    deliver_both(&stack, sender, "SMTPUTF8 BODY=8BITMIME", &sent);
}

#[test]
fn from_and_dot_lines_are_kept_with_mboxo_quoting_only_in_mbox() {
    let stack = MailStack::resources(&resources()).start();
    let sent = message(
        SENDER,
        RCPTS[0],
        "From and dots",
        "",
        b"From the start of a line\n>From already quoted\n.\n..\n.leading dot\nFrom\nfrom lower case\n",
    );
    deliver_both(&stack, SENDER, "", &sent);
    // The mbox copy is quoted (virtual(8)'s mboxo), the Maildir copy is not; Dovecot serves the
    // mbox copy as stored: it does not unquote `>From `.
    let maildir = stack.imap(RCPTS[0]).messages;
    let mbox = stack.imap(RCPTS[1]).messages;
    assert!(mail::find(&maildir[0], b"\r\nFrom the start of a line\r\n").is_some());
    assert!(mail::find(&mbox[0], b"\r\n>From the start of a line\r\n").is_some());
    assert!(mail::find(&mbox[0], b"\r\n>From already quoted\r\n").is_some());
}

#[test]
fn lines_longer_than_998_characters_are_not_split() {
    let stack = MailStack::resources(&resources()).start();
    let mut body = Vec::new();
    body.extend_from_slice(&vec![b'a'; 999]);
    body.push(b'\n');
    body.extend_from_slice(&vec![b'b'; 5000]);
    body.push(b'\n');
    body.extend_from_slice(&vec![b'c'; 100_000]);
    body.extend_from_slice(b"\nend\n");
    let sent = message(SENDER, RCPTS[0], "long lines", "", &body);
    deliver_both(&stack, SENDER, "", &sent);
}

#[test]
fn message_without_final_newline_gets_one_through_deliver() {
    let stack = MailStack::resources(&resources()).start();
    let sent = message(SENDER, RCPTS[0], "no final newline", "", b"last line");
    assert!(!sent.ends_with(b"\n"));
    let mut command = deliver_command(
        &binary("virtmail-agent"),
        &stack.resources_dir(),
        &stack.base(),
    );
    command.args(["-f", SENDER]).args(RCPTS);
    let out = output_with_input(&mut command, &sent);
    assert!(
        out.status.success(),
        "deliver: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for rcpt in RCPTS {
        let stored = stack.wait_for_messages(rcpt, 1);
        let d = mail::delivery(&stored[0]);
        assert_eq!(d.return_path, format!("<{SENDER}>"));
        assert_eq!(
            (d.x_original_to.as_str(), d.delivered_to.as_str()),
            (rcpt, rcpt)
        );
        // No smtpd, so no Received; the missing newline is added (virtual(8) V26), nothing else.
        assert_eq!(d.received, None);
        let mut expected = sent.clone();
        expected.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&d.rest),
            String::from_utf8_lossy(&expected)
        );
        let fetched = stack.imap(rcpt).messages;
        assert_eq!(fetched, vec![mail::crlf(&stored[0])], "{rcpt} over IMAP");
    }
}

#[test]
fn twenty_megabyte_message_is_delivered_whole() {
    // The profile caps message_size_limit at Postfix's default (10240000) whatever the
    // mailboxSizeLimit; a MailServer raises it with spec.postfix.parameters, as here.
    let stack = MailStack::resources(&resources())
        .postfix_param("message_size_limit", "30000000")
        .start();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\n";
    let mut body = Vec::with_capacity(20 * 1024 * 1024 + line.len());
    while body.len() < 20 * 1024 * 1024 {
        body.extend_from_slice(line);
    }
    let sent = message(SENDER, RCPTS[0], "20 MB", "", &body);
    deliver_both(&stack, SENDER, &format!("SIZE={}", sent.len()), &sent);
}
