//! Crash safety: a delivery process killed with SIGKILL in the middle of writing (so no
//! in-process cleanup can run) leaves nothing a reader or the next delivery would see as mail —
//! the next delivery, by a fresh process as after an agent restart, truncates an mbox back over
//! the unacknowledged partial append and removes the dead delivery's Maildir `tmp/` file. Real
//! processes (`virtmail-agent deliver`), real uids, real SIGKILL.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use virtmail_tests::delivery::*;
use virtmail_tests::fixtures::mailbox;
use virtmail_tests::process::output_with_input;

fn mailboxes() -> [String; 2] {
    [
        mailbox("alice", "address: alice@example.test"),
        mailbox("bob", "address: bob@example.test, format: Mbox"),
    ]
}

/// A message large enough (40 MB) that its write can be caught half done.
fn huge() -> Vec<u8> {
    let mut m = b"Subject: huge\n\n".to_vec();
    let line = b"a line of a message that is written while the writer is killed........\n";
    while m.len() < 40_000_000 {
        m.extend_from_slice(line);
    }
    m
}

fn world(locks: &str) -> (World, PathBuf) {
    let w = World::create();
    w.domain_dir();
    let resources = w.resources_with(
        &format!(
            "mailboxBase: /nonexistent/base, mailboxLock: [{locks}], mailboxSizeLimit: 200000000"
        ),
        &mailboxes(),
    );
    (w, resources)
}

/// Start `virtmail-agent deliver` for `rcpt` with `message` on stdin, and SIGKILL it as soon as
/// `partial()` says the write is under way. Returns whether the kill caught it half done (the
/// caller retries otherwise: the write finished first).
fn kill_mid_write(
    w: &World,
    resources: &Path,
    rcpt: &str,
    message: &[u8],
    partial: impl Fn() -> bool,
) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtmail-agent"))
        .arg("deliver")
        .arg("--resources")
        .arg(resources)
        .arg("--mailbox-base")
        .arg(&w.base)
        .args(["-f", "sender@origin.test", rcpt])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn virtmail-agent deliver");
    let mut stdin = child.stdin.take().unwrap();
    let message = message.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&message);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut caught = false;
    while Instant::now() < deadline {
        if partial() {
            let _ = child.kill();
            caught = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    writer.join().unwrap();
    // Caught means: still partial after the process is gone.
    caught && partial()
}

/// Deliver a small message with a fresh `deliver` process (like a restarted agent).
fn deliver_small(w: &World, resources: &Path, rcpt: &str) {
    let (out, err, rc) = w.cli(
        resources,
        &["-f", "sender@origin.test", "--lock-timeout", "5s", rcpt],
        b"Subject: after the crash\r\n\r\nsmall\r\n",
    );
    assert_eq!(rc, 0, "{out}{err}");
}

fn mbox_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Deliver to bob's mbox once, then kill a huge delivery half way. Returns the mbox as it was
/// before the killed delivery (complete copies of huge messages whose write finished before a
/// kill are part of it).
fn partial_mbox_append(w: &World, resources: &Path) -> Vec<u8> {
    let mbox = w.base.join("example.test/bob");
    deliver_small(w, resources, "bob@example.test");
    let huge = huge();
    for _attempt in 0..8 {
        let before = fs::read(&mbox).unwrap();
        let length = before.len() as u64;
        // Half done: longer than before, shorter than a whole copy.
        let partial = || {
            let now = mbox_len(&mbox);
            now > length && now < length + huge.len() as u64
        };
        if kill_mid_write(w, resources, "bob@example.test", &huge, partial) {
            assert!(
                mbox_len(&mbox) > length,
                "the killed write left a partial entry (the test's premise)"
            );
            return before;
        }
    }
    panic!("never caught the mbox write half done in 8 attempts");
}

fn crash_leaves_no_partial_mbox_entry(locks: &str) {
    let (w, resources) = world(locks);
    let mbox = w.base.join("example.test/bob");
    let before = partial_mbox_append(&w, &resources);
    deliver_small(&w, &resources, "bob@example.test");
    let after = fs::read(&mbox).unwrap();
    assert!(
        after.starts_with(&before),
        "mail written before the crash is untouched"
    );
    let added = String::from_utf8_lossy(&after[before.len()..]).into_owned();
    assert!(
        added.starts_with("From sender@origin.test ") && added.ends_with("\n\nsmall\n\n"),
        "after the acknowledged mail comes exactly the new message, not the partial append: {:?}",
        &added[..added.len().min(300)]
    );
    assert!(
        !mbox.with_file_name("bob.lock").exists(),
        "no dotlock left behind"
    );
    assert!(
        !added.contains("written while the writer is killed")
            && added.matches("\nFrom ").count() == 0,
        "nothing of the killed, unacknowledged write is left ({} bytes added)",
        added.len()
    );
}

#[test]
fn killed_mbox_append_is_truncated_back_by_the_next_delivery_fcntl() {
    crash_leaves_no_partial_mbox_entry("fcntl");
}

#[test]
fn killed_mbox_append_under_a_dotlock_is_recovered_without_waiting_for_the_stale_time() {
    // The killed process leaves its dotlock behind; the next delivery must not wait 500 s for it
    // to go stale: the lock is provably the dead delivery's (journal), so it is broken at once.
    crash_leaves_no_partial_mbox_entry("fcntl, dotlock");
}

#[test]
fn bytes_appended_by_others_after_a_crashed_append_are_never_truncated() {
    let (w, resources) = world("fcntl");
    let mbox = w.base.join("example.test/bob");
    partial_mbox_append(&w, &resources);
    // Another program appends without honouring locks (or after the crash released them).
    let mut file = fs::OpenOptions::new().append(true).open(&mbox).unwrap();
    file.write_all(
        b"\nFrom other@elsewhere.test  Wed Nov 25 10:00:00 2026\nSubject: foreign\n\nforeign\n\n",
    )
    .unwrap();
    drop(file);
    let with_foreign = fs::read(&mbox).unwrap();
    deliver_small(&w, &resources, "bob@example.test");
    let after = fs::read(&mbox).unwrap();
    assert!(
        after.starts_with(&with_foreign),
        "nothing is cut when the bytes after the crashed append are not provably ours"
    );
    assert!(after.ends_with(b"\n\nsmall\n\n"));
}

#[test]
fn killed_maildir_delivery_leaves_no_stray_tmp_file_after_the_next_delivery() {
    let (w, resources) = world("fcntl, dotlock");
    let maildir = w.base.join("example.test/alice");
    deliver_small(&w, &resources, "alice@example.test");
    let huge = huge();
    let mut caught = false;
    for _attempt in 0..8 {
        let tmp = maildir.join("tmp");
        let partial = || names(&tmp).iter().any(|n| !n.ends_with(".maildirsize"));
        if kill_mid_write(&w, &resources, "alice@example.test", &huge, partial) {
            caught = true;
            break;
        }
    }
    assert!(
        caught,
        "never caught the Maildir write half done in 8 attempts"
    );
    let stray = names(&maildir.join("tmp"));
    assert_eq!(stray.len(), 1, "the killed delivery's tmp file: {stray:?}");
    // Our name: <sec>.M<usec>P<pid>Q<n>.<host>, no ",S=" (that is only in new/).
    assert!(stray[0].contains(".M") && stray[0].contains('P') && !stray[0].contains(",S="));
    // A file in tmp/ that is not ours (another program's name) is never touched.
    let foreign = maildir.join("tmp/1700000000.12345_6.otherhost");
    fs::write(&foreign, b"someone else's delivery in progress\n").unwrap();
    chown(&foreign, UID, GID);
    std::thread::sleep(Duration::from_millis(20));
    deliver_small(&w, &resources, "alice@example.test");
    assert_eq!(
        names(&maildir.join("tmp")),
        vec!["1700000000.12345_6.otherhost".to_string()],
        "the dead delivery's file is gone, the foreign one kept"
    );
    let new = names(&maildir.join("new"));
    for name in &new {
        let content = fs::read(maildir.join("new").join(name)).unwrap();
        assert!(
            content.ends_with(b"\n\nsmall\n") || content.len() as u64 > huge.len() as u64 - 100,
            "new/{name} is a complete message"
        );
    }
    assert!(new.len() >= 2);
}

/// Where the agent is killed by the test below: strace (a real tool, not a hook in the agent)
/// delivers SIGKILL on entry to the first `unlinkat`, which for an mbox delivery under a dotlock
/// is the removal of that dotlock: the message is durable, the lock still there.
fn deliver_killed_at_the_dotlock_removal(w: &World, resources: &Path, rcpt: &str) {
    let strace = Path::new("/usr/bin/strace");
    assert!(
        strace.exists(),
        "strace is missing (scripts/install-deps.sh installs it)"
    );
    let mut command = Command::new(strace);
    command.args([
        "-f",
        "-o",
        "/dev/null",
        "-e",
        "trace=unlinkat",
        "-e",
        "inject=unlinkat:signal=KILL:when=1",
    ]);
    command
        .arg(env!("CARGO_BIN_EXE_virtmail-agent"))
        .arg("deliver")
        .arg("--resources")
        .arg(resources)
        .arg("--mailbox-base")
        .arg(&w.base)
        .args(["-f", "sender@origin.test", rcpt]);
    let output = output_with_input(&mut command, b"Subject: killed\r\n\r\nkilled at unlock\r\n");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&output.status),
        Some(9),
        "the delivery was killed as it removed its dotlock: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_delivery_killed_as_it_removes_its_dotlock_leaves_a_lock_the_next_delivery_breaks_at_once() {
    let (w, resources) = world("fcntl, dotlock");
    let mbox = w.base.join("example.test/bob");
    deliver_small(&w, &resources, "bob@example.test");
    deliver_killed_at_the_dotlock_removal(&w, &resources, "bob@example.test");
    let lock = mbox.with_file_name("bob.lock");
    assert!(lock.exists(), "the killed delivery left its dotlock");
    assert!(
        String::from_utf8_lossy(&fs::read(&mbox).unwrap()).ends_with("\n\nkilled at unlock\n\n"),
        "its message was written in full before the lock was to be removed"
    );
    // Far below the stale time (500 s): only a lock proven dead is removed in time.
    deliver_small(&w, &resources, "bob@example.test");
    assert!(!lock.exists(), "no dotlock left behind");
    let text = String::from_utf8_lossy(&fs::read(&mbox).unwrap()).into_owned();
    assert_eq!(text.matches("\nsmall\n").count(), 2, "{text}");
    assert!(text.ends_with("\n\nsmall\n\n"));
}
