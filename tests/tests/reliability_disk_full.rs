//! Disk full, end to end: the mailbox base is a small tmpfs; once it is full,
//! mail through Postfix is deferred with the agent's `452 4.3.0`, nothing partial is left (the
//! mbox byte for byte as before, nothing in Maildir `tmp/`, nothing new in `new/`), and when
//! space returns Postfix's own retry delivers every message byte for byte (read back through
//! Dovecot IMAP too).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use virtmail_tests::fixtures::{alice_and_bob, stream};
use virtmail_tests::mail::message;
use virtmail_tests::mailstack::MailStack;
use virtmail_tests::reliability::without_colours;

const SENDER: &str = "sender@remote.test";
const MAILDIR: &str = "alice@example.test";
const MBOX: &str = "bob@example.test";

/// Fill the file system of `dir` with one file until ENOSPC (as root: tmpfs keeps no reserve).
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create filler");
    let block = vec![b'f'; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever is left (less than a block) goes too.
    for size in [4096usize, 512, 64, 1] {
        while file.write(&block[..size]).map(|n| n > 0).unwrap_or(false) {}
    }
    path
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn body(tag: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..600 {
        b.extend_from_slice(format!("{tag} line {i:04}: some text to take space\n").as_bytes());
    }
    b.extend_from_slice(b"From the middle, quoted in the mbox\n.a dot line\n");
    b
}

#[test]
fn full_mailbox_disk_defers_452_430_and_postfix_delivers_when_space_returns() {
    let stack = MailStack::resources(&stream(alice_and_bob("")))
        .base_tmpfs("8m")
        .start();
    // One message each first: the Maildir and the mbox (and its journal) exist.
    for rcpt in [MAILDIR, MBOX] {
        let first = message(SENDER, rcpt, "before the disk fills", "", &body("first"));
        stack.send(SENDER, &[rcpt], &first).assert_accepted();
        stack.assert_delivered(rcpt, SENDER, rcpt, rcpt, &first);
    }
    let (maildir, _) = stack.mailbox(MAILDIR);
    let (mbox, _) = stack.mailbox(MBOX);
    let filler = fill(&stack.base());
    let mbox_before = std::fs::read(&mbox).unwrap();
    let new_before = files(&maildir.join("new"));

    let sent: Vec<(&str, Vec<u8>)> = [MAILDIR, MBOX]
        .into_iter()
        .map(|rcpt| {
            let m = message(SENDER, rcpt, "while the disk is full", "", &body("full"));
            stack.send(SENDER, &[rcpt], &m).assert_accepted();
            (rcpt, m)
        })
        .collect();

    // Both deferred by Postfix with the agent's 452 4.3.0, at least once each.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (rcpt, _) in &sent {
        loop {
            let deferred = stack.postfix().log_status(rcpt, "deferred");
            if let Some(line) = deferred.iter().find(|l| l.contains("452 4.3.0")) {
                assert!(
                    line.contains("No space left on device"),
                    "deferral names the cause: {line}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{rcpt}: no 452 4.3.0 deferral in Postfix's log:\n{}\nagent:\n{}",
                stack.postfix().log(),
                stack.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let agent_log = without_colours(&stack.agent_log());
    for rcpt in [MAILDIR, MBOX] {
        assert!(
            agent_log
                .lines()
                .any(|l| l.contains(&format!("recipient={rcpt}"))
                    && l.contains("status=4.3.0")
                    && l.contains("code=452")
                    && l.contains("No space left on device")),
            "the agent replied 452 4.3.0 for {rcpt}:\n{agent_log}"
        );
    }
    // Let Postfix retry a few times against the full disk: still nothing partial.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        stack.postfix().log_status(MAILDIR, "sent").len()
            + stack.postfix().log_status(MBOX, "sent").len()
            == 2,
        "only the two first messages were delivered while the disk was full"
    );
    assert_eq!(
        std::fs::read(&mbox).unwrap(),
        mbox_before,
        "the mbox is byte for byte as before (no partial entry)"
    );
    assert_eq!(
        files(&maildir.join("tmp")),
        Vec::<String>::new(),
        "nothing in tmp/"
    );
    assert_eq!(
        files(&maildir.join("new")),
        new_before,
        "nothing new in new/"
    );
    assert!(
        !stack.postfix().queue_is_empty(),
        "Postfix still holds both"
    );

    // Space returns: Postfix's retry (1-2 s backoff in the test profile) delivers both. The
    // files are checked before Dovecot reads the mbox (its IMAP session may add its own status
    // headers to earlier messages).
    std::fs::remove_file(&filler).unwrap();
    stack.wait_for_messages(MBOX, 2);
    stack.wait_for_messages(MAILDIR, 2);
    stack.wait_queue_empty();
    let mbox_after = std::fs::read(&mbox).unwrap();
    assert!(
        mbox_after.starts_with(&mbox_before),
        "earlier mbox content untouched"
    );
    assert_eq!(stack.stored(MBOX).len(), 2, "exactly one more mbox entry");
    assert_eq!(files(&maildir.join("tmp")), Vec::<String>::new());
    assert_eq!(files(&maildir.join("new")).len(), new_before.len() + 1);
    for (rcpt, m) in &sent {
        stack.assert_delivered(rcpt, SENDER, rcpt, rcpt, m);
    }
}
