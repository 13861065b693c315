//! socketmap answers from a running `virtmail-agent serve`, over its unix socket.

use std::time::Duration;

use virtmail_tests::serve::Agent;
use virtmail_tests::socketmap::Socketmap;

#[test]
fn socketmap_answers_exact_extension_case_catch_all_and_unknown() {
    let agent = Agent::start();
    let mut m = agent.map();
    for (request, reply) in [
        // domain map: folded, exact domain only.
        ("domain example.test", "OK example.test"),
        ("domains EXAMPLE.Test", "OK example.test"),
        ("domain sub.example.test", "NOTFOUND "),
        ("domain nowhere.test", "NOTFOUND "),
        // mailbox map: exact, mixed case, extension, quoted form, catch-all, unknown.
        ("mailbox alice@example.test", "OK example.test/alice/"),
        ("mailboxes ALICE@Example.TEST", "OK example.test/alice/"),
        ("mailbox alice+tag@example.test", "OK example.test/alice/"),
        ("mailbox \"alice\"@example.test", "OK example.test/alice/"),
        ("mailbox bob@example.test", "OK example.test/bob"),
        ("mailbox anyone@catchall.test", "OK catchall.test/info/"),
        ("mailbox Anyone+x@CatchAll.test", "OK catchall.test/info/"),
        ("mailbox nobody@example.test", "NOTFOUND "),
        ("mailbox nobody@nowhere.test", "NOTFOUND "),
        ("mailbox example.test", "NOTFOUND "),
        // Suspended mailboxes exist (LMTP refuses them 450 at RCPT).
        ("mailbox frozen@example.test", "OK example.test/frozen/"),
        // alias map: comma-joined targets, extension, case; bare domains are never alias domains.
        (
            "alias Team+x@EXAMPLE.test",
            "OK alice@example.test,bob@example.test",
        ),
        (
            "aliases team@example.test",
            "OK alice@example.test,bob@example.test",
        ),
        ("alias example.test", "NOTFOUND "),
        ("alias alice@example.test", "NOTFOUND "),
        ("alias nobody@nowhere.test", "NOTFOUND "),
    ] {
        assert_eq!(m.query(request), reply, "{request}");
    }
    // Unknown map: PERM (a configuration error in Postfix, mail stays queued).
    assert!(m.query("transport x@example.test").starts_with("PERM "));
}

#[test]
fn socketmap_deferring_entry_is_temp() {
    let agent = Agent::start();
    let mut m = agent.map();
    let reply = m.query("mailbox broken@example.test");
    assert!(reply.starts_with("TEMP "), "{reply}");
    assert!(reply.contains("InvalidOwner"), "{reply}");
}

#[test]
fn socketmap_without_directory_answers_temp() {
    let agent = Agent::start_with(Some("this: [is not valid"), &[]);
    let mut m = agent.map();
    let reply = m.query("mailbox alice@example.test");
    assert!(reply.starts_with("TEMP "), "{reply}");
    let reply = m.query("domain example.test");
    assert!(reply.starts_with("TEMP "), "{reply}");
    let (status, body) = agent.get("/readyz");
    assert_eq!(status, 503, "{body}");
}

#[test]
fn socketmap_pipelined_requests_and_limits() {
    let agent = Agent::start();
    let mut m = agent.map();
    // Two requests in one write: two replies, in order.
    m.send_raw(b"19:domain example.test,19:domain nowhere.test,");
    assert_eq!(m.read_reply().unwrap(), "OK example.test");
    assert_eq!(m.read_reply().unwrap(), "NOTFOUND ");
    // A query over 10,000 bytes is a protocol error: the connection closes, nothing is read.
    m.send_raw(b"10001:");
    assert_eq!(m.read_reply(), None);
    // Malformed framing closes the connection too.
    let mut m = agent.map();
    m.send_raw(b"5:hello;");
    assert_eq!(m.read_reply(), None);
    let mut m = agent.map();
    m.send_raw(b"x:");
    assert_eq!(m.read_reply(), None);
    // The server survives all of that.
    let mut m = agent.map();
    assert_eq!(m.query("domain example.test"), "OK example.test");
}

#[test]
fn socketmap_idle_connection_is_closed() {
    let agent = Agent::with_flags(&["--socketmap-idle-timeout", "1s"]);
    let mut m = agent.map();
    assert_eq!(m.query("domain example.test"), "OK example.test");
    let started = std::time::Instant::now();
    assert_eq!(m.read_reply(), None);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn socketmap_many_concurrent_clients() {
    let agent = Agent::start();
    let path = agent.map_path();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut m = Socketmap::connect(&path);
                for j in 0..200 {
                    let reply = m.query(&format!("mailbox alice+{i}x{j}@example.test"));
                    assert_eq!(reply, "OK example.test/alice/");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (_, metrics) = agent.get("/metrics");
    assert!(
        metrics.contains("virtmail_lookups_total{map=\"mailbox\",result=\"ok\"} 10000"),
        "{metrics}"
    );
}
