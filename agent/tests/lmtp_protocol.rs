//! LMTP protocol conformance against the running agent: Python's smtplib.LMTP and a raw client.

use std::time::Duration;

use virtmail_tests::lmtp::Lmtp;
use virtmail_tests::serve::{Agent, eventually};

fn code(reply: &str) -> &str {
    &reply[..reply.len().min(9)]
}

#[test]
fn lmtp_reference_dialogue_with_smtplib() {
    let agent = Agent::start();
    let out = agent.smtplib_dialogue(
        "sender@remote.test",
        &[
            "alice@example.test",
            "nobody@example.test",
            "frozen@example.test",
            "broken@example.test",
            "Team+x@example.test",
            "anyone@catchall.test",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "lhlo 8bitmime enhancedstatuscodes pipelining size smtputf8",
        "{out}"
    );
    assert_eq!(lines[1], "mail 250 2.1.0 OK", "{out}");
    assert_eq!(lines[2], "rcpt alice@example.test 250 2.1.5 OK", "{out}");
    assert!(
        lines[3].starts_with("rcpt nobody@example.test 550 5.1.1 <nobody@example.test>"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("rcpt frozen@example.test 450 4.2.1"),
        "{out}"
    );
    assert!(
        lines[5].starts_with("rcpt broken@example.test 451 4.3.5"),
        "{out}"
    );
    // Aliases are Postfix's business (virtual_alias_maps): the agent only knows mailboxes.
    assert!(
        lines[6].starts_with("rcpt Team+x@example.test 550 5.1.1"),
        "{out}"
    );
    assert_eq!(lines[7], "rcpt anyone@catchall.test 250 2.1.5 OK", "{out}");
    // One reply per accepted recipient, in RCPT order, naming the recipient.
    assert!(lines[8].starts_with("data alice@example.test "), "{out}");
    assert!(lines[8].contains("<alice@example.test>"), "{out}");
    assert!(lines[9].starts_with("data anyone@catchall.test "), "{out}");
    assert!(lines[9].contains("<anyone@catchall.test>"), "{out}");
    assert_eq!(lines[10], "quit 221", "{out}");
    assert_eq!(lines.len(), 11, "{out}");
}

#[test]
fn lmtp_lhlo_capabilities_and_refused_commands() {
    let agent = Agent::with_flags(&["--max-message-size", "4096"]);
    let mut c = agent.lmtp();
    assert!(c.reply().starts_with("220 mx.test "));
    // Before LHLO: HELO/EHLO are refused, MAIL needs LHLO.
    assert!(c.command("HELO client.test").starts_with("500 5.5.1"));
    assert!(c.command("EHLO client.test").starts_with("500 5.5.1"));
    assert!(c.command("MAIL FROM:<a@b.test>").starts_with("503 5.5.1"));
    let lhlo = c.command("LHLO client.test");
    assert_eq!(
        lhlo,
        "250-mx.test\n250-PIPELINING\n250-ENHANCEDSTATUSCODES\n250-8BITMIME\n250-SMTPUTF8\n250 SIZE 4096"
    );
    assert_eq!(c.command("NOOP"), "250 2.0.0 OK");
    assert!(
        c.command("VRFY alice@example.test")
            .starts_with("502 5.5.1")
    );
    assert!(c.command("EXPN team@example.test").starts_with("502 5.5.1"));
    assert!(c.command("STARTTLS").starts_with("502 5.5.1"));
    assert!(c.command("BDAT 10 LAST").starts_with("502 5.5.1"));
    assert!(c.command("FOO").starts_with("500 5.5.1"));
    assert!(c.command("").starts_with("500 5.5.2"));
    assert!(
        c.command("RCPT TO:<alice@example.test>")
            .starts_with("503 5.5.1")
    );
    assert!(c.command("DATA").starts_with("503 5.5.1"));
    assert_eq!(c.command("MAIL FROM:<>"), "250 2.1.0 OK");
    assert!(
        c.command("MAIL FROM:<>").starts_with("503 5.5.1"),
        "nested MAIL"
    );
    assert!(
        c.command("DATA").starts_with("503 5.5.1"),
        "DATA without RCPT"
    );
    assert_eq!(c.command("RSET"), "250 2.0.0 OK");
    assert!(
        c.command("RCPT TO:<alice@example.test>")
            .starts_with("503 5.5.1"),
        "RSET ended it"
    );
    assert_eq!(c.command("QUIT"), "221 2.0.0 Bye");
    assert!(c.closed());
}

#[test]
fn lmtp_mail_and_rcpt_parameters() {
    let agent = Agent::with_flags(&["--max-message-size", "4096"]);
    let mut c = agent.lmtp();
    c.hello();
    assert_eq!(
        code(&c.command("MAIL FROM:<a@b.test> SIZE=5000")),
        "552 5.3.4"
    );
    assert_eq!(code(&c.command("MAIL FROM:<a@b.test> SIZE=x")), "501 5.5.4");
    assert_eq!(
        code(&c.command("MAIL FROM:<a@b.test> BODY=BINARYMIME")),
        "501 5.5.4"
    );
    assert_eq!(
        code(&c.command("MAIL FROM:<a@b.test> RET=FULL")),
        "555 5.5.4"
    );
    assert_eq!(code(&c.command("MAIL FROM:a@b.test")), "501 5.1.7");
    assert_eq!(code(&c.command("MAIL TO:<a@b.test>")), "501 5.5.4");
    // Postfix hands over UTF-8 addresses without SMTPUTF8 too: taken, never 553 5.6.7.
    assert_eq!(c.command("MAIL FROM:<jörg@b.test>"), "250 2.1.0 OK");
    assert_eq!(code(&c.command("RSET")), "250 2.0.0");
    assert_eq!(
        c.command("MAIL FROM:<a@b.test> SIZE=4096 BODY=8BITMIME SMTPUTF8"),
        "250 2.1.0 OK"
    );
    assert_eq!(code(&c.command("RCPT TO:<>")), "501 5.1.3");
    assert_eq!(code(&c.command("RCPT TO:<no-domain>")), "501 5.1.3");
    assert_eq!(
        code(&c.command("RCPT TO:<alice@example.test> NOTIFY=NEVER")),
        "555 5.5.4"
    );
    assert_eq!(
        code(&c.command("RCPT TO:<alice@example.test> ORCPT=rfc822;a+ZZ")),
        "501 5.5.4"
    );
    assert_eq!(
        c.command("RCPT TO:<alice@example.test> ORCPT=rfc822;team+2Bx@example.test"),
        "250 2.1.5 OK"
    );
    assert_eq!(
        c.command("RCPT TO:<\"alice\"@example.test>"),
        "250 2.1.5 OK"
    );
    assert_eq!(
        c.command("RCPT TO:<@relay.test:alice@example.test>"),
        "250 2.1.5 OK"
    );
    assert_eq!(c.command("RCPT TO:<jörg@catchall.test>"), "250 2.1.5 OK");
    assert_eq!(c.command("rcpt to: <ALICE@EXAMPLE.TEST>"), "250 2.1.5 OK");
}

#[test]
fn lmtp_pipelined_transaction_in_one_write() {
    let agent = Agent::start();
    let mut c = agent.lmtp();
    c.hello();
    c.send(
        b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<anyone@catchall.test>\r\nDATA\r\n",
    );
    assert_eq!(c.reply(), "250 2.1.0 OK");
    assert_eq!(c.reply(), "250 2.1.5 OK");
    assert_eq!(code(&c.reply()), "550 5.1.1");
    assert_eq!(c.reply(), "250 2.1.5 OK");
    assert!(c.reply().starts_with("354 "));
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\nNOOP\r\n");
    let first = c.reply();
    let second = c.reply();
    assert!(first.contains("<alice@example.test>"), "{first}");
    assert!(second.contains("<anyone@catchall.test>"), "{second}");
    assert_eq!(c.reply(), "250 2.0.0 OK", "NOOP after the body");
    // A cached connection starts another transaction.
    assert_eq!(c.command("MAIL FROM:<>"), "250 2.1.0 OK");
}

#[test]
fn lmtp_line_length_and_error_limits() {
    let agent = Agent::start();
    let mut c = agent.lmtp();
    c.hello();
    let long = format!("NOOP {}", "x".repeat(600));
    assert_eq!(code(&c.command(&long)), "500 5.5.2");
    // Exactly 512 octets including CRLF is fine.
    let max = format!("NOOP {}", "x".repeat(512 - 7));
    assert_eq!(c.command(&max), "250 2.0.0 OK");
    // A megabyte without a line end is consumed, not buffered, and refused once.
    c.send(&vec![b'A'; 1 << 20]);
    assert_eq!(code(&c.command("")), "500 5.5.2");
    assert_eq!(c.command("NOOP"), "250 2.0.0 OK");
    // NUL and invalid UTF-8 are refused, the session survives.
    c.send(b"NO\0OP\r\n");
    assert_eq!(code(&c.reply()), "500 5.5.2");
    c.send(b"MAIL FROM:<\xff@x.test>\r\n");
    assert_eq!(code(&c.reply()), "500 5.5.2");
    assert_eq!(c.command("NOOP"), "250 2.0.0 OK");
    // Too many errors close the session.
    let mut last = String::new();
    for _ in 0..30 {
        last = c.command("BOGUS");
        if last.starts_with("421") {
            break;
        }
    }
    assert!(last.starts_with("421 4.7.0"), "{last}");
    assert!(c.closed());
}

#[test]
fn lmtp_too_many_recipients() {
    let agent = Agent::with_flags(&["--max-recipients", "3"]);
    let mut c = agent.lmtp();
    c.hello();
    assert_eq!(c.command("MAIL FROM:<s@remote.test>"), "250 2.1.0 OK");
    for _ in 0..3 {
        assert_eq!(c.command("RCPT TO:<alice@example.test>"), "250 2.1.5 OK");
    }
    assert_eq!(
        code(&c.command("RCPT TO:<alice@example.test>")),
        "452 4.5.3"
    );
    c.command("DATA");
    c.send(b"x\r\n.\r\n");
    for _ in 0..3 {
        assert!(
            c.reply().contains("<alice@example.test>"),
            "one reply per duplicate RCPT"
        );
    }
}

#[test]
fn lmtp_message_over_size_limit_after_data() {
    let agent = Agent::with_flags(&["--max-message-size", "1000"]);
    let mut c = agent.lmtp();
    c.hello();
    c.command("MAIL FROM:<s@remote.test>");
    c.command("RCPT TO:<alice@example.test>");
    c.command("RCPT TO:<anyone@catchall.test>");
    assert!(c.command("DATA").starts_with("354"));
    // One long line over the limit: read to the final dot, then 552 5.3.4 per recipient.
    let mut body = vec![b'y'; 5000];
    body.extend_from_slice(b"\r\n.\r\n");
    c.send(&body);
    assert_eq!(code(&c.reply()), "552 5.3.4");
    assert_eq!(code(&c.reply()), "552 5.3.4");
    assert_eq!(c.command("NOOP"), "250 2.0.0 OK");
}

#[test]
fn lmtp_command_timeout_closes() {
    let agent = Agent::with_flags(&["--command-timeout", "1s"]);
    let mut c = agent.lmtp();
    c.hello();
    let reply = c.reply();
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(c.closed());
}

#[test]
fn lmtp_connection_limit() {
    let agent = Agent::with_flags(&["--max-connections", "2"]);
    let mut a = agent.lmtp();
    let mut b = agent.lmtp();
    a.hello();
    b.hello();
    let mut c = agent.lmtp();
    assert!(c.reply().starts_with("421 4.3.2"));
    assert!(c.closed());
    drop(a);
    // A slot frees up when a session ends.
    assert!(eventually(Duration::from_secs(5), || {
        let mut d = agent.lmtp();
        d.reply().starts_with("220 ")
    }));
}

#[test]
fn lmtp_garbage_never_kills_the_server() {
    let agent = Agent::start();
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..20 {
        let mut c = agent.lmtp();
        c.reply();
        let mut junk = Vec::new();
        for _ in 0..4000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(match seed % 8 {
                0 => b'\r',
                1 => b'\n',
                2 => b'<',
                3 => b'.',
                _ => (seed >> 8) as u8,
            });
        }
        let _ = c.try_send(&junk);
        drop(c);
    }
    let mut c = agent.lmtp();
    c.hello();
    assert_eq!(c.command("NOOP"), "250 2.0.0 OK");
    let mut m = agent.map();
    assert_eq!(m.query("domain example.test"), "OK example.test");
}

#[test]
fn lmtp_no_directory_defers_rcpt() {
    // Unreadable manifests: no directory is ever loaded.
    let agent = Agent::start_with(Some("this: [is not valid"), &[]);
    let mut c = Lmtp::connect(&agent.lmtp_path());
    c.hello();
    assert_eq!(c.command("MAIL FROM:<s@remote.test>"), "250 2.1.0 OK");
    assert_eq!(
        code(&c.command("RCPT TO:<alice@example.test>")),
        "451 4.3.0"
    );
}
