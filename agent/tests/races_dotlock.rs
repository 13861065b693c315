//! Races around mbox dotlocks (virtual(8) V19, formats-protocols.md §4.3), against the real engine
//! with real uids, many delivery threads at once.
//!
//! - A dotlock left by a dead process is broken once it is older than the stale time (by its
//!   ctime, as Postfix decides), and every waiting delivery then gets through, one at a time.
//! - A lock is never treated as stale before it is that old, whatever its mtime says.
//! - While the stale lock is broken, no delivery may remove a *fresh* lock that another client
//!   (Dovecot, mutt, another agent) created in the meantime: a dotlock-only client holding the
//!   lock must see the mbox unchanged and find its own lock file still in place when it lets go.
//!
//! Loop counts can be raised for a longer run with `VIRTMAIL_RACES_ITERATIONS`.

mod deliver_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use deliver_support::*;
use virtmail_agent::deliver::Options;
use virtmail_crds::resources::LockMethod;

/// Rounds of the stale-lock race (each on its own mailbox); scaled by `VIRTMAIL_RACES_ITERATIONS`.
fn iterations(default: usize) -> usize {
    std::env::var("VIRTMAIL_RACES_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A unique, recognisable message: `tag` on every body line.
fn message(tag: &str, lines: usize) -> Vec<u8> {
    let mut m = format!("From: a@origin.test\nSubject: {tag}\n\n").into_bytes();
    for i in 0..lines {
        m.extend_from_slice(format!("{tag} line {i} {}\n", "x".repeat(50)).as_bytes());
    }
    m
}

/// Plant `<mbox>.lock` as a delivery process that died would leave it: mode 0, empty, owned by
/// the recipient, with an mtime an hour in the past.
fn plant_dead_lock(path: &Path) {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .unwrap_or_else(|e| panic!("plant {}: {e}", path.display()));
    chown(path, UID, GID);
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| fs::File::open(path))
        .and_then(|f| f.set_modified(old))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
    assert_eq!(fs::metadata(path).unwrap().mode() & 0o777, 0);
}

/// Every message in the mbox, checked to be whole (every body line carries the message's tag,
/// numbered from 0) and returned by tag.
fn mbox_tags(path: &Path, lines: usize) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    if text.is_empty() {
        return Vec::new();
    }
    assert!(text.starts_with("From "), "mbox does not start with From_");
    let mut tags = Vec::new();
    for chunk in text[5..].split("\n\nFrom ") {
        let subject = chunk
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("message without Subject in {}", path.display()));
        let body: Vec<&str> = chunk
            .lines()
            .filter(|l| l.contains(" line ") && !l.starts_with("Subject"))
            .collect();
        assert_eq!(body.len(), lines, "message {subject} split or merged");
        for (i, line) in body.iter().enumerate() {
            assert!(
                line.starts_with(&format!("{subject} line {i} ")),
                "interleaved in {subject}: {line}"
            );
        }
        tags.push(subject.to_string());
    }
    tags
}

fn stale_world(mailboxes: usize) -> (World, Vec<(String, PathBuf)>) {
    let mut w = World::create();
    w.domain_dir();
    let mut boxes = Vec::new();
    for i in 0..mailboxes {
        let address = format!("box{i}@{DOMAIN}");
        w.mailbox(&address, &format!("{DOMAIN}/box{i}"));
        boxes.push((address, w.base.join(format!("{DOMAIN}/box{i}"))));
    }
    (w, boxes)
}

fn lock_of(mbox: &Path) -> PathBuf {
    let mut name = mbox.file_name().unwrap().to_os_string();
    name.push(".lock");
    mbox.with_file_name(name)
}

#[test]
fn stale_dotlock_of_a_dead_process_is_broken_and_every_waiting_delivery_gets_through() {
    const THREADS: usize = 8;
    const EACH: usize = 4;
    const LINES: usize = 200;
    let (w, boxes) = stale_world(1);
    let (address, mbox) = boxes[0].clone();
    let lock = lock_of(&mbox);
    plant_dead_lock(&lock);
    let stale = Duration::from_secs(2);
    let mut opts = options();
    opts.stale_lock_time = stale;
    opts.lock_timeout = Duration::from_secs(20);
    let w = Arc::new(w);
    let barrier = Arc::new(Barrier::new(THREADS));
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (w, barrier, opts, address) =
                (w.clone(), barrier.clone(), opts.clone(), address.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..EACH)
                    .map(|m| {
                        let tag = format!("T{t}M{m}");
                        let outcome =
                            w.deliver_with(&address, "s@origin.test", &message(&tag, LINES), &opts);
                        (tag, code(&outcome.status), outcome.status.to_string())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let waited = started.elapsed();
    for (tag, code, text) in &results {
        assert_eq!(code, "2.0.0", "{tag}: {text}");
    }
    // The lock was only taken over once it was older than the stale time (its ctime is from
    // when it was planted; the old mtime does not count).
    assert!(
        waited >= stale - Duration::from_millis(50),
        "deliveries went through after {waited:?}, before the lock was {stale:?} old"
    );
    let mut tags = mbox_tags(&mbox, LINES);
    assert_eq!(tags.len(), THREADS * EACH);
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), THREADS * EACH, "a message was written twice");
    assert!(!lock.exists(), "a dotlock was left behind");
    let locks: Vec<String> = names(&w.base.join(DOMAIN))
        .into_iter()
        .filter(|n| n.ends_with(".lock"))
        .collect();
    assert!(locks.is_empty(), "dotlocks left behind: {locks:?}");
    w.assert_outside_untouched();
}

#[test]
fn dotlock_with_an_old_mtime_but_a_recent_ctime_is_not_stale() {
    // Postfix judges a lock by its ctime (dot_lockfile.c, virtual(8) V19): touching the mtime back
    // does not make a live lock breakable.
    let (w, boxes) = stale_world(1);
    let (address, mbox) = boxes[0].clone();
    let lock = lock_of(&mbox);
    plant_dead_lock(&lock);
    let mut opts = options();
    opts.stale_lock_time = Duration::from_secs(30);
    opts.lock_timeout = Duration::from_millis(400);
    let outcome = w.deliver_with(&address, "s@origin.test", &message("M", 3), &opts);
    assert_eq!(code(&outcome.status), "4.2.0", "{}", outcome.status);
    assert!(
        outcome.status.text.ends_with("box0.lock: File exists"),
        "{}",
        outcome.status
    );
    assert!(
        lock.exists(),
        "a lock younger than the stale time was removed"
    );
    assert!(!mbox.exists(), "mail was written without the lock");
}

#[test]
fn dotlock_younger_than_the_stale_time_is_never_broken_even_across_a_second_boundary() {
    // A lock created late in a second (ctime x.9) must still count as fresh 1.5 s later (at
    // x+2.4): its age is 1.5 s, below a 2 s stale time (judging by whole seconds of ctime would
    // break it at x+2, at an age of 1.1 s).
    let (w, boxes) = stale_world(1);
    let (address, mbox) = boxes[0].clone();
    let lock = lock_of(&mbox);
    loop {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        if now.subsec_millis() >= 900 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    plant_dead_lock(&lock);
    let mut opts = options();
    opts.stale_lock_time = Duration::from_secs(2);
    opts.lock_timeout = Duration::from_millis(1500);
    let outcome = w.deliver_with(&address, "s@origin.test", &message("M", 3), &opts);
    assert_eq!(
        code(&outcome.status),
        "4.2.0",
        "a 1.5 s old lock was treated as stale (2 s): {}",
        outcome.status
    );
    assert!(lock.exists(), "a live lock was removed");
    assert!(!mbox.exists(), "mail was written without the lock");
}

#[derive(Default)]
struct RaceCounts {
    stolen: AtomicUsize,
    changed: AtomicUsize,
    holds: AtomicUsize,
}

const DELIVERIES: usize = 6;
const PROBES: usize = 2;

/// One round on one mailbox with a stale lock: deliveries and dotlock-only probes start at once.
fn stale_lock_round(
    w: &Arc<World>,
    opts: &Options,
    round: usize,
    address: &str,
    mbox: &Path,
    counts: &Arc<RaceCounts>,
) {
    let barrier = Arc::new(Barrier::new(DELIVERIES + PROBES));
    let done = Arc::new(AtomicBool::new(false));
    let probes: Vec<_> = (0..PROBES)
        .map(|_| {
            let (barrier, done, mbox, counts) = (
                barrier.clone(),
                done.clone(),
                mbox.to_path_buf(),
                counts.clone(),
            );
            std::thread::spawn(move || {
                let lock = lock_of(&mbox);
                barrier.wait();
                // Two turns each: the race is at the moment the stale lock goes away.
                let mut turns = 0;
                while turns < 2 && !done.load(Ordering::SeqCst) {
                    // A well-behaved dotlock client: O_EXCL create, never breaks locks.
                    let Ok(file) = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o000)
                        .open(&lock)
                    else {
                        std::thread::yield_now();
                        continue;
                    };
                    let mine = file.metadata().unwrap().ino();
                    drop(file);
                    turns += 1;
                    counts.holds.fetch_add(1, Ordering::SeqCst);
                    let size = fs::metadata(&mbox).map(|m| m.len()).unwrap_or(0);
                    std::thread::sleep(Duration::from_millis(2));
                    if fs::metadata(&mbox).map(|m| m.len()).unwrap_or(0) != size {
                        counts.changed.fetch_add(1, Ordering::SeqCst);
                    }
                    match fs::symlink_metadata(&lock) {
                        Ok(m) if m.ino() == mine => fs::remove_file(&lock).unwrap(),
                        // Someone removed our lock (and maybe made their own): not ours to
                        // remove.
                        _ => {
                            counts.stolen.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    let deliveries: Vec<_> = (0..DELIVERIES)
        .map(|t| {
            let (w, barrier, opts, address) = (
                w.clone(),
                barrier.clone(),
                opts.clone(),
                address.to_string(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let tag = format!("R{round}T{t}");
                let outcome = w.deliver_with(&address, "s@origin.test", &message(&tag, 20), &opts);
                (tag, code(&outcome.status), outcome.status.to_string())
            })
        })
        .collect();
    for handle in deliveries {
        let (tag, code, text) = handle.join().unwrap();
        assert_eq!(code, "2.0.0", "{tag}: {text}");
    }
    done.store(true, Ordering::SeqCst);
    for probe in probes {
        probe.join().unwrap();
    }
    let tags = mbox_tags(mbox, 20);
    assert_eq!(tags.len(), DELIVERIES, "round {round}: {tags:?}");
    assert!(!lock_of(mbox).exists(), "round {round}: lock left behind");
}

#[test]
fn breaking_a_stale_dotlock_never_removes_a_fresh_lock_of_another_client() {
    // Many deliveries find the same stale lock at once and each decides to break it. Another
    // client that only uses dotlocks (mutt, a Dovecot configured with dotlock) creates its own
    // lock as soon as the stale one is gone. A delivery that judged the *old* lock stale must
    // not then unlink the *new* one: the client would find its lock gone and mail appended while
    // it believed it held the mailbox. Rounds run several mailboxes at once so that threads are
    // preempted between their checks.
    const PARALLEL: usize = 4;
    let rounds = iterations(200);
    let (mut w, boxes) = stale_world(rounds);
    w.directory.settings.mailbox_lock = vec![LockMethod::Fcntl, LockMethod::Dotlock];
    for (_, mbox) in &boxes {
        plant_dead_lock(&lock_of(mbox));
    }
    let stale = Duration::from_secs(2);
    // Wait until every planted lock is clearly older than the stale time.
    std::thread::sleep(stale + Duration::from_millis(1100));
    let mut opts = options();
    opts.stale_lock_time = stale;
    opts.lock_timeout = Duration::from_secs(60);
    let w = Arc::new(w);
    let counts = Arc::new(RaceCounts::default());
    for (batch, chunk) in boxes.chunks(PARALLEL).enumerate() {
        let handles: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, (address, mbox))| {
                let (w, opts, counts) = (w.clone(), opts.clone(), counts.clone());
                let (address, mbox) = (address.clone(), mbox.clone());
                std::thread::spawn(move || {
                    stale_lock_round(&w, &opts, batch * PARALLEL + i, &address, &mbox, &counts)
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    }
    let stolen = counts.stolen.load(Ordering::SeqCst);
    let changed = counts.changed.load(Ordering::SeqCst);
    eprintln!(
        "stale-lock race: {rounds} stale locks x {DELIVERIES} deliveries + {PROBES} dotlock-only clients, {} client holds, {stolen} client locks removed by a delivery, {changed} appends under a client's lock",
        counts.holds.load(Ordering::SeqCst),
    );
    assert_eq!(
        stolen, 0,
        "a delivery removed a fresh dotlock another client held"
    );
    assert_eq!(
        changed, 0,
        "mail was appended while another client held the dotlock"
    );
    w.assert_outside_untouched();
}

/// A mailbox owner can hold the `flock` of its mbox's directory and write its own journal's
/// dotlock claim. Waiting for that directory lock must neither hold up the deliveries of other
/// mailboxes (no process-wide lock held while waiting) nor, once the wait times out, go on to
/// judge and remove the dotlock without the directory lock.
#[test]
fn a_user_held_directory_flock_stalls_no_other_mailbox_and_is_never_bypassed() {
    use std::os::fd::AsFd as _;
    let mut w = World::create();
    w.domain_dir();
    w.mkdir("other.test", OTHER_UID, OTHER_GID);
    w.directory
        .domains
        .insert("other.test".into(), w.directory.domains[DOMAIN].clone());
    w.mailbox("bob@example.test", "example.test/bob");
    let carol = w.mailbox("carol@other.test", "other.test/carol");
    carol.uid = OTHER_UID;
    carol.gid = OTHER_GID;
    let options = Options {
        lock_timeout: Duration::from_secs(4),
        ..options()
    };
    // First deliveries create both journals.
    for rcpt in ["bob@example.test", "carol@other.test"] {
        assert_eq!(
            code(&w.deliver(rcpt, b"Subject: first\n\nx\n").status),
            "2.0.0"
        );
    }
    // bob: a dotlock of his own, a journal claim naming it with a dead pid, and the directory's
    // flock held (as bob could, with flock(1)).
    let domain = w.base.join("example.test");
    let bob_lock = domain.join("bob.lock");
    fs::write(&bob_lock, b"").unwrap();
    chown(&bob_lock, UID, GID);
    let meta = fs::metadata(&bob_lock).unwrap();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let namespace = fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .display()
        .to_string();
    let line = format!(
        "lock {} {} {} pid {dead_pid} ns {namespace} start 1 host mx.test\n",
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    let mut slot = line.into_bytes();
    slot.resize(256, 0);
    fs::write(domain.join(".bob.virtmail-append"), &slot).unwrap();
    let directory = fs::File::open(&domain).unwrap();
    rustix::fs::flock(directory.as_fd(), rustix::fs::FlockOperation::LockExclusive).unwrap();
    // carol (another directory): a lock of a live client that lets go after 300 ms.
    let carol_lock = w.base.join("other.test/carol.lock");
    fs::write(&carol_lock, b"").unwrap();
    chown(&carol_lock, OTHER_UID, OTHER_GID);

    let w = &w;
    let options = &options;
    std::thread::scope(|scope| {
        let bob = scope.spawn(move || {
            w.deliver_with(
                "bob@example.test",
                "s@origin.test",
                b"Subject: bob\n\nx\n",
                options,
            )
        });
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let carol = scope.spawn(move || {
            w.deliver_with(
                "carol@other.test",
                "s@origin.test",
                b"Subject: carol\n\nx\n",
                options,
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        fs::remove_file(&carol_lock).unwrap();
        let carol = carol.join().unwrap();
        let carol_took = started.elapsed();
        assert_eq!(code(&carol.status), "2.0.0", "{}", carol.status);
        assert!(
            carol_took < Duration::from_secs(2),
            "carol's delivery waited {carol_took:?} behind bob's user-held directory lock"
        );
        let bob = bob.join().unwrap();
        assert_eq!(code(&bob.status), "4.2.0", "{}", bob.status);
    });
    assert!(
        bob_lock.exists(),
        "the dotlock was removed without the directory lock that serializes breakers"
    );
    drop(directory);
}
