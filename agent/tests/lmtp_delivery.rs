//! LMTP end to end with real deliveries (run as root: files are written as uid 5000/5001).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use virtmail_tests::fixtures::{agent_directory, mailbox, stream};
use virtmail_tests::lmtp::Lmtp;
use virtmail_tests::serve::{Agent, eventually};

fn files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn new_mail(agent: &Agent, mailbox: &str) -> Vec<PathBuf> {
    files(&agent.base().join(mailbox).join("new"))
}

#[test]
fn lmtp_delivers_durably_with_per_recipient_headers() {
    let agent = Agent::start();
    let mut c = agent.lmtp();
    c.hello();
    assert_eq!(
        c.command("MAIL FROM:<s@remote.test> BODY=8BITMIME"),
        "250 2.1.0 OK"
    );
    assert_eq!(
        c.command("RCPT TO:<alice@example.test> ORCPT=rfc822;team+2Bx@example.test"),
        "250 2.1.5 OK"
    );
    assert_eq!(c.command("RCPT TO:<bob@example.test>"), "250 2.1.5 OK");
    assert!(c.command("DATA").starts_with("354"));
    let long = "L".repeat(100_000);
    c.send(format!("Subject: t\r\n\r\n..dot\r\n{long}\r\nlast\r\n.\r\n").as_bytes());
    let a = c.reply();
    let b = c.reply();
    assert!(a.starts_with("250 2.0.0 <alice@example.test>"), "{a}");
    assert!(b.starts_with("250 2.0.0 <bob@example.test>"), "{b}");

    let maildir = new_mail(&agent, "example.test/alice");
    assert_eq!(maildir.len(), 1);
    let meta = std::fs::metadata(&maildir[0]).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (5000, 5000));
    let text = std::fs::read_to_string(&maildir[0]).unwrap();
    assert!(
        text.starts_with(
            "Return-Path: <s@remote.test>\nX-Original-To: team+x@example.test\nDelivered-To: alice@example.test\nSubject: t\n\n.dot\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("\n{long}\nlast\n")),
        "long line intact"
    );
    assert!(files(&agent.base().join("example.test/alice/tmp")).is_empty());

    let mbox = std::fs::read_to_string(agent.base().join("example.test/bob")).unwrap();
    assert!(mbox.starts_with("From s@remote.test  "), "{mbox}");
    assert!(mbox.contains("\nX-Original-To: bob@example.test\nDelivered-To: bob@example.test\n"));
    // Metrics count both copies as delivered.
    let metrics = agent.get("/metrics").1;
    assert!(
        metrics.contains("virtmail_deliveries_total{class=\"2xx\"} 2"),
        "{metrics}"
    );
}

#[test]
fn lmtp_smtplib_delivers() {
    let agent = Agent::start();
    let out = agent.smtplib_dialogue("<>", &["alice@example.test", "anyone@catchall.test"]);
    assert!(out.contains("data alice@example.test 250 2.0.0"), "{out}");
    assert!(out.contains("data anyone@catchall.test 250 2.0.0"), "{out}");
    let text = std::fs::read_to_string(&new_mail(&agent, "catchall.test/info")[0]).unwrap();
    assert!(text.starts_with("Return-Path: <>\n"), "{text}");
    // smtplib dot-stuffs; the server unstuffs: the lines arrive as written.
    assert!(
        text.contains("\nline one\n.leading dot\n..two dots\n"),
        "{text}"
    );
}

#[test]
fn lmtp_disconnect_mid_data_leaves_nothing() {
    let agent = Agent::start();
    let mut c = agent.lmtp();
    c.hello();
    c.command("MAIL FROM:<s@remote.test>");
    c.command("RCPT TO:<alice@example.test>");
    assert!(c.command("DATA").starts_with("354"));
    c.send(&vec![b'x'; 200_000]);
    c.send(b"\r\nno final dot\r\n");
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    // Later sessions work, and the aborted message is nowhere.
    let mut c = agent.lmtp();
    c.hello();
    let replies = c.deliver("s@remote.test", &["alice@example.test"], b"ok\r\n");
    assert!(replies[0].starts_with("250 2.0.0"));
    let delivered = new_mail(&agent, "example.test/alice");
    assert_eq!(delivered.len(), 1);
    assert!(
        std::fs::read_to_string(&delivered[0])
            .unwrap()
            .ends_with("\nok\n")
    );
    assert!(files(&agent.base().join("example.test/alice/tmp")).is_empty());
}

#[test]
fn lmtp_fifty_parallel_connections() {
    let agent = Agent::start();
    let path = agent.lmtp_path();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Lmtp::connect(&path);
                c.hello();
                let body = format!("Subject: {i}\r\n\r\nmessage {i}\r\n");
                let replies = c.deliver(
                    "s@remote.test",
                    &["alice@example.test", "anyone@catchall.test"],
                    body.as_bytes(),
                );
                for r in replies {
                    assert!(r.starts_with("250 2.0.0"), "{r}");
                }
                assert_eq!(c.command("QUIT"), "221 2.0.0 Bye");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(new_mail(&agent, "example.test/alice").len(), 50);
    assert_eq!(new_mail(&agent, "catchall.test/info").len(), 50);
}

#[test]
fn lmtp_reload_under_load_fails_no_delivery() {
    let agent = Agent::start();
    let path = agent.lmtp_path();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Lmtp::connect(&path);
                c.hello();
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c.deliver("s@remote.test", &["alice@example.test"], b"x\r\n");
                    assert!(r[0].starts_with("250 2.0.0"), "{r:?}");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    // Rewrite the resources ten times, each adding a mailbox, while deliveries run.
    let mut manifests = vec![agent_directory()];
    let mut m = agent.map();
    for i in 0..10 {
        manifests.push(mailbox(
            &format!("n{i}"),
            &format!("address: n{i}@example.test"),
        ));
        let tmp = agent.dir.path().join("next.yaml");
        std::fs::write(&tmp, stream(&manifests)).unwrap();
        std::fs::rename(&tmp, agent.resources().join("all.yaml")).unwrap();
        let key = format!("mailbox n{i}@example.test");
        assert!(eventually(Duration::from_secs(2), || m
            .query(&key)
            .starts_with("OK ")));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(sent > 0);
    assert_eq!(new_mail(&agent, "example.test/alice").len(), sent);
    let metrics = agent.get("/metrics").1;
    assert!(
        metrics.contains("virtmail_deliveries_total{class=\"4xx\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("virtmail_reloads_total{result=\"failure\"} 0"),
        "{metrics}"
    );
}
