//! mbox lock order against Debian's Dovecot: its packaged default is `mbox_write_locks = fcntl
//! dotlock` (kernel lock first), ours is Postfix's dotlock first. A delivery that waited for the
//! kernel lock while holding the dotlock would deadlock with a Dovecot save that holds the kernel
//! lock and waits for the dotlock, until one of them timed out. The agent never waits for a
//! kernel lock while holding the dotlock, so both finish.

mod deliver_support;

use std::fs;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use deliver_support::*;

/// Dovecot's packaged (Debian) write lock order, as its `doveconf -d` reports it.
fn packaged_write_locks() -> String {
    let output = Command::new("doveconf")
        .args(["-d", "mbox_write_locks"])
        .output()
        .expect("doveconf (install Debian's dovecot-core; scripts/install-deps.sh does)");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Dovecot's imap as the recipient with the packaged settings, appending one message to the
/// mbox INBOX at `mbox`. Returns the running process (its stdout tells whether APPEND worked).
fn dovecot_append(w: &World, mbox: &Path, message: &str) -> Child {
    let home = w.dir.path().join("home");
    fs::create_dir_all(&home).unwrap();
    chown(&home, UID, GID);
    // Only what a private instance needs; every mbox setting is the package's default.
    let location = format!(
        "mbox:{}:INBOX={}:INDEX=MEMORY",
        home.join("mail").display(),
        mbox.display()
    );
    let message = message.replace('\n', "\r\n");
    let commands = format!(
        "a APPEND INBOX {{{}+}}\r\n{message}\r\nb logout\r\n",
        message.len()
    );
    spawn_imap(w, "", &location, &home, &commands).0
}

/// Whether some process is blocked waiting for a kernel lock on the file with inode `ino`
/// (`/proc/locks` lists waiters with `->`).
fn lock_waiter_on(ino: u64) -> bool {
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|line| {
        line.contains("->")
            && line
                .split_whitespace()
                .nth(6)
                .and_then(|id| id.rsplit(':').next())
                .is_some_and(|i| i.parse() == Ok(ino))
    })
}

#[test]
fn delivery_and_dovecot_with_debian_lock_order_both_finish() {
    assert_eq!(
        packaged_write_locks(),
        "mbox_write_locks = fcntl dotlock",
        "this test is about Debian's packaged lock order"
    );
    let mut w = World::create();
    w.domain_dir();
    w.mailbox("bob@example.test", "example.test/bob");
    let mbox = w.base.join("example.test/bob");
    let lock = w.base.join("example.test/bob.lock");
    assert_eq!(
        code(
            &w.deliver("bob@example.test", b"Subject: first\n\nfirst\n")
                .status
        ),
        "2.0.0"
    );

    // A reader (say a mail client) holds the kernel lock, so Dovecot's save queues behind it...
    let reader = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mbox)
        .unwrap();
    virtmail_agent::fs::lock::fcntl(reader.as_fd(), Instant::now() + Duration::from_secs(5))
        .expect("the reader's whole-file lock");
    let ino = fs::metadata(&mbox).unwrap().ino();
    let dovecot = dovecot_append(&w, &mbox, "Subject: dovecot\n\nfrom dovecot\n");
    assert!(
        eventually(Duration::from_secs(60), || lock_waiter_on(ino)),
        "Dovecot never waited for the mbox's fcntl lock"
    );

    // ...and our delivery starts: it takes the dotlock and finds the kernel lock busy.
    let delivery = std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            let mut options = options();
            options.lock_timeout = Duration::from_secs(60);
            w.deliver_with(
                "bob@example.test",
                "sender@origin.test",
                b"Subject: agent\n\nfrom the agent\n",
                &options,
            )
        });
        // Once it has been seen holding the dotlock (or has finished trying), the reader lets go:
        // Dovecot gets the kernel lock at once and then wants the dotlock.
        eventually(Duration::from_secs(5), || {
            lock.exists() || handle.is_finished()
        });
        drop(reader);
        handle.join().unwrap()
    });
    let output = dovecot.wait_with_output().unwrap();
    let output = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(code(&delivery.status), "2.0.0", "{:?}", delivery.status);
    assert!(output.contains("a OK"), "Dovecot's APPEND failed: {output}");
    let content = fs::read_to_string(&mbox).unwrap();
    for subject in ["first", "agent", "dovecot"] {
        assert!(
            content.contains(&format!("Subject: {subject}\n")),
            "{subject} missing:\n{content}"
        );
    }
    assert!(!lock.exists(), "no dotlock left behind");
}

/// `eventually` from the shared helpers, for a condition checked often (the lock is brief).
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}
