//! mbox delivery as virtual(8) does it (virtual(8) V17–V23, V29), as root with real uids.

mod deliver_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use deliver_support::*;
use virtmail_crds::resources::LockMethod;

const BOB: &str = "bob@example.test";

fn world() -> World {
    let mut w = World::create();
    w.domain_dir();
    w.mailbox(BOB, "example.test/bob");
    w
}

#[test]
fn v17_missing_mbox_is_created_0600_as_recipient() {
    let w = world();
    let outcome = w.deliver(BOB, MESSAGE);
    assert_eq!(code(&outcome.status), "2.0.0", "{:?}", outcome.status);
    let path = w.base.join("example.test/bob");
    assert_eq!(owner(&path), (UID, GID));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(outcome.path.as_deref(), Some(path.to_str().unwrap()));
    assert_eq!(outcome.size, fs::metadata(&path).unwrap().len());
}

#[test]
fn v23_success_text_is_delivered_to_mailbox() {
    let w = world();
    assert_eq!(
        w.deliver(BOB, MESSAGE).status.to_string(),
        "2.0.0 delivered to mailbox"
    );
}

#[test]
fn v21_from_line_has_two_spaces_and_asctime_date() {
    let w = world();
    w.deliver(BOB, MESSAGE);
    let text = fs::read_to_string(w.base.join("example.test/bob")).unwrap();
    let first = text.lines().next().unwrap();
    let date = first
        .strip_prefix("From sender@origin.test  ")
        .unwrap_or_else(|| panic!("From_ line {first:?}"));
    assert_eq!(date.len(), 24, "{date:?}");
    let fields: Vec<&str> = date.split(' ').filter(|f| !f.is_empty()).collect();
    assert_eq!(fields.len(), 5, "{date:?}");
    assert!(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&fields[0]));
    assert_eq!(fields[3].len(), 8);
}

#[test]
fn v21_exact_bytes_headers_quoting_final_newline_and_blank_line() {
    let w = world();
    let message = b"Subject: x\n\nFrom the start\n>From kept\nFrom: not a header here\nlast line";
    let outcome = w.deliver_with(
        "Bob+Tag@Example.TEST",
        "a b@origin.test",
        message,
        &options(),
    );
    assert_eq!(code(&outcome.status), "2.0.0");
    let bytes = fs::read(w.base.join("example.test/bob")).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (from_line, rest) = text.split_once('\n').unwrap();
    assert!(
        from_line.starts_with("From \"a b\"@origin.test  "),
        "{from_line}"
    );
    assert_eq!(
        rest,
        "Return-Path: <\"a b\"@origin.test>\n\
         X-Original-To: Bob+Tag@Example.TEST\n\
         Delivered-To: Bob+Tag@Example.TEST\n\
         Subject: x\n\n>From the start\n>From kept\nFrom: not a header here\nlast line\n\n"
    );
}

#[test]
fn v21_null_sender_is_mailer_daemon_and_empty_return_path() {
    let w = world();
    w.deliver_with(BOB, "", MESSAGE, &options());
    let text = fs::read_to_string(w.base.join("example.test/bob")).unwrap();
    assert!(text.starts_with("From MAILER-DAEMON  "), "{text}");
    assert!(text.contains("\nReturn-Path: <>\n"));
}

#[test]
fn v22_second_delivery_appends_after_the_first() {
    let w = world();
    w.deliver(BOB, b"Subject: one\n\n1\n");
    let first = fs::read(w.base.join("example.test/bob")).unwrap();
    w.deliver(BOB, b"Subject: two\n\n2\n");
    let both = fs::read(w.base.join("example.test/bob")).unwrap();
    assert!(both.starts_with(&first));
    assert_eq!(
        String::from_utf8_lossy(&both)
            .matches("\nFrom sender")
            .count()
            + 1,
        2
    );
}

#[test]
fn v18_existing_mode_is_never_changed() {
    let w = world();
    let path = w.base.join("example.test/bob");
    fs::write(&path, b"").unwrap();
    chown(&path, UID, GID);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(code(&w.deliver(BOB, MESSAGE).status), "2.0.0");
    assert_eq!(mode(&path), 0o640);
}

#[test]
fn v18_missing_parent_directory_defers_420_and_is_not_created() {
    let mut w = World::create();
    w.mailbox(BOB, "example.test/bob");
    let outcome = w.deliver(BOB, MESSAGE);
    let path = w.base.join("example.test/bob");
    assert_eq!(
        outcome.status.to_string(),
        format!(
            "4.2.0 delivery failed to mailbox {}: unable to create lock file {}.lock: No such file or directory",
            path.display(),
            path.display()
        )
    );
    assert!(!w.base.join("example.test").exists());
    w.directory.settings.mailbox_lock = vec![LockMethod::Fcntl];
    let outcome = w.deliver(BOB, MESSAGE);
    assert_eq!(
        outcome.status.to_string(),
        format!(
            "4.2.0 delivery failed to mailbox {}: cannot create file exclusively: No such file or directory",
            path.display()
        )
    );
}

#[test]
fn v19_dotlock_is_created_as_recipient_and_removed_afterwards() {
    let w = world();
    assert_eq!(code(&w.deliver(BOB, MESSAGE).status), "2.0.0");
    // The dotlock is gone; the (empty) append journal of crash recovery stays.
    assert_eq!(
        names(&w.base.join("example.test")),
        vec![".bob.virtmail-append", "bob"]
    );
    assert_eq!(
        fs::metadata(w.base.join("example.test/.bob.virtmail-append"))
            .unwrap()
            .len(),
        0
    );
    // The recipient may not create files in a root-owned 0755 directory: the lock (created
    // first, V19) fails, so it was never created with root's rights.
    let domain = w.base.join("example.test");
    chown(&domain, 0, 0);
    fs::set_permissions(&domain, fs::Permissions::from_mode(0o755)).unwrap();
    let outcome = w.deliver(BOB, MESSAGE);
    assert_eq!(code(&outcome.status), "4.2.0");
    assert!(
        outcome.status.text.ends_with("bob.lock: Permission denied"),
        "{}",
        outcome.status
    );
}

#[test]
fn v19_busy_dotlock_waits_then_defers_420() {
    let w = world();
    let lock = w.base.join("example.test/bob.lock");
    fs::write(&lock, b"").unwrap();
    let started = Instant::now();
    let outcome = w.deliver(BOB, MESSAGE);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(code(&outcome.status), "4.2.0");
    assert!(
        outcome.status.text.ends_with("bob.lock: File exists"),
        "{}",
        outcome.status
    );
    // The lock is someone else's: it stays.
    assert!(lock.exists());
}

#[test]
fn v19_dotlock_released_while_waiting_is_taken() {
    let w = world();
    let lock = w.base.join("example.test/bob.lock");
    fs::write(&lock, b"").unwrap();
    let remover = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fs::remove_file(lock).unwrap();
        })
    };
    let mut opts = options();
    opts.lock_timeout = Duration::from_secs(5);
    let outcome = w.deliver_with(BOB, "s@x.test", MESSAGE, &opts);
    remover.join().unwrap();
    assert_eq!(code(&outcome.status), "2.0.0", "{}", outcome.status);
}

#[test]
fn v19_stale_dotlock_is_removed() {
    let w = world();
    fs::write(w.base.join("example.test/bob.lock"), b"").unwrap();
    let mut opts = options();
    opts.stale_lock_time = Duration::ZERO;
    std::thread::sleep(Duration::from_millis(1100));
    let outcome = w.deliver_with(BOB, "s@x.test", MESSAGE, &opts);
    assert_eq!(code(&outcome.status), "2.0.0", "{}", outcome.status);
    assert!(!w.base.join("example.test/bob.lock").exists());
}

#[test]
fn v19_busy_fcntl_lock_defers_420() {
    let mut w = world();
    w.directory.settings.mailbox_lock = vec![LockMethod::Fcntl];
    let path = w.base.join("example.test/bob");
    fs::write(&path, b"").unwrap();
    chown(&path, UID, GID);
    // A classic process-associated F_SETLK lock (Postfix, Dovecot, mutt) held by a child.
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let child = hold_fcntl_lock_in_child(&file);
    let outcome = w.deliver(BOB, MESSAGE);
    release_child(child);
    assert_eq!(
        outcome.status.to_string(),
        format!(
            "4.2.0 delivery failed to mailbox {}: unable to lock for exclusive access: Resource temporarily unavailable",
            path.display()
        )
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
}

/// Fork a child that takes a classic `F_SETLK` write lock on `file` and waits for SIGTERM.
fn hold_fcntl_lock_in_child(file: &fs::File) -> std::process::Child {
    use std::os::fd::AsRawFd;
    let script = format!(
        "import fcntl,os,time,sys\nfd=os.open('/proc/{}/fd/{}',os.O_WRONLY)\nfcntl.lockf(fd,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(60)\n",
        std::process::id(),
        file.as_raw_fd()
    );
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to hold a classic fcntl lock");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

fn release_child(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn v29_size_limit_bounces_522_and_leaves_the_mbox_unchanged() {
    let mut w = world();
    w.deliver(BOB, MESSAGE);
    let path = w.base.join("example.test/bob");
    let before = fs::read(&path).unwrap();
    w.directory.settings.mailbox_size_limit = before.len() as u64 + 50;
    let outcome = w.deliver(BOB, &[b'x'; 100]);
    assert_eq!(
        outcome.status.to_string(),
        format!(
            "5.2.2 delivery failed to mailbox {}: error writing message: File too large",
            path.display()
        )
    );
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn mbox_quota_is_checked_at_rcpt_and_at_delivery() {
    let mut w = world();
    w.directory.mailboxes.get_mut(BOB).unwrap().quota = Some(400);
    assert_eq!(code(&w.deliver(BOB, MESSAGE).status), "2.0.0");
    let path = w.base.join("example.test/bob");
    let before = fs::read(&path).unwrap();
    // Would go over: refused at delivery, nothing written.
    let outcome = w.deliver(BOB, &[b'y'; 300]);
    assert_eq!(code(&outcome.status), "5.2.2", "{}", outcome.status);
    assert_eq!(outcome.status.reply_code(), 552);
    assert_eq!(fs::read(&path).unwrap(), before);
    // Already full: refused at RCPT time.
    fs::write(&path, vec![b'z'; 400]).unwrap();
    let status = virtmail_agent::deliver::precheck(&w.directory, BOB).unwrap_err();
    assert_eq!(code(&status), "5.2.2");
}
