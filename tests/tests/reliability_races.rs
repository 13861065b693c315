//! Races against the real agent: real `virtmail-agent serve` processes over
//! unix-socket LMTP, real uid switching (run as root), a real Dovecot IMAP server.
//!
//! - An attacker swaps mailbox directories (the Maildir, its `new/` and `tmp/`, the mbox's
//!   parent) and the mbox file for symlinks pointing outside the base in a loop while
//!   deliveries run, atomically (`RENAME_EXCHANGE`) or by renaming the original away first (so
//!   that deliveries also meet a missing path and re-create mailboxes): nothing is ever written
//!   outside the base, every 250 is stored exactly once inside it, everything else is a 4xx
//!   (Postfix retries it), and the retries land.
//! - Dovecot reads an mbox over IMAP (SELECT and EXAMINE, FETCH) while the agent appends: every
//!   view is a whole-message prefix of the final mailbox, never shrinking, and the final
//!   mailbox holds every message byte for byte (lock methods agree: fcntl, formats-protocols.md
//!   §4.3), even though Dovecot rewrites the file to add its X-UID headers meanwhile.
//! - Two agents on one volume deliver to the same Maildir and mbox at once: every 250 message
//!   is there exactly once, byte for byte, the mbox is not interleaved, no tmp file or dotlock
//!   is left.
//! - A dotlock left by a dead process defers the mailbox 4.2.0 with serve's default timings
//!   (ctime younger than 500 s), holds up no other mailbox, and the retry lands once.
//!
//! Engine-level dotlock and Maildir tmp races are in `agent/tests/races_*.rs`. Counts are
//! printed (`--nocapture`); `VIRTMAIL_RACES_ITERATIONS` scales the loops for a longer run.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{RenameFlags, renameat2};
use virtmail_crds::resources::MailboxFormat;
use virtmail_tests::dovecot::{self, Dovecot};
use virtmail_tests::fixtures::{mail_domain, mail_server, mailbox, stream};
use virtmail_tests::lmtp::Lmtp;
use virtmail_tests::mail;
use virtmail_tests::mailstack::{split_mbox, stored_messages};
use virtmail_tests::process::{Process, binary, wait_for};
use virtmail_tests::workspace_root;

const UID: u32 = 5101;
const GID: u32 = 5101;
const SENDER: &str = "sender@origin.test";
const ALICE: &str = "alice@md.test";
const BOB: &str = "bob@mb.test";

/// Loop counts: the default keeps CI short; `VIRTMAIL_RACES_ITERATIONS` overrides.
fn iterations(default: usize) -> usize {
    std::env::var("VIRTMAIL_RACES_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn require_root() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "the race tests must run as root: the agent switches to uid {UID} for every delivery"
    );
}

/// A mailbox base with a Maildir domain and an mbox domain (both prepared by an administrator:
/// root-owned, 1777), a world-writable directory outside the base that no delivery may touch,
/// and the resources every agent of the test serves.
struct Volume {
    dir: tempfile::TempDir,
    base: PathBuf,
    outside: PathBuf,
    resources: PathBuf,
}

/// No mailbox size limit (V29): long runs (`VIRTMAIL_RACES_ITERATIONS`) grow the mbox past the
/// default 51,200,000 bytes.
fn manifests() -> String {
    stream([
        mail_server("mail", "mailboxSizeLimit: 0"),
        mail_domain("md", "md.test", ALICE, UID, ""),
        mail_domain("mb", "mb.test", BOB, UID, ""),
        mailbox("alice", &format!("address: {ALICE}, format: Maildir")),
        mailbox("bob", &format!("address: {BOB}, format: Mbox")),
    ])
}

impl Volume {
    fn new() -> Volume {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("virtmail-races-")
            .tempdir()
            .expect("tempdir");
        let mode = |p: &Path, m: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
        };
        mode(dir.path(), 0o755);
        let base = dir.path().join("mail");
        let outside = dir.path().join("outside");
        let resources = dir.path().join("resources");
        for d in [&base, &outside, &resources] {
            fs::create_dir(d).expect("mkdir");
        }
        mode(&base, 0o755);
        // World-writable, so that the recipient *could* write here if containment failed.
        mode(&outside, 0o777);
        fs::write(outside.join("victim"), b"original\n").expect("victim");
        mode(&outside.join("victim"), 0o666);
        for domain in ["md.test", "mb.test"] {
            fs::create_dir(base.join(domain)).expect("domain dir");
            mode(&base.join(domain), 0o1777);
        }
        fs::write(resources.join("resources.yaml"), manifests()).expect("resources");
        Volume {
            dir,
            base,
            outside,
            resources,
        }
    }

    fn maildir(&self) -> PathBuf {
        self.base.join("md.test/alice")
    }

    fn mbox(&self) -> PathBuf {
        self.base.join("mb.test/bob")
    }

    /// Start `virtmail-agent serve --resources` on this volume with its own unix sockets.
    fn agent(&self, name: &str) -> Agent {
        let lmtp = self.dir.path().join(format!("{name}.lmtp"));
        let mut command = Command::new(binary("virtmail-agent"));
        command
            .arg("serve")
            .arg("--resources")
            .arg(&self.resources)
            .arg("--mailbox-base")
            .arg(&self.base)
            .arg("--lmtp")
            .arg(format!("unix:{}", lmtp.display()))
            .arg("--socketmap")
            .arg(format!("unix:{}/{name}.map", self.dir.path().display()))
            .arg("--http")
            .arg(format!("unix:{}/{name}.http", self.dir.path().display()))
            .args(["--hostname", &format!("{name}.races.test")]);
        Agent {
            process: Process::start(name, command),
            lmtp,
        }
    }

    /// Wait until an agent has loaded the directory and provisioned both mailboxes.
    fn wait_ready(&self, agents: &mut [&mut Agent]) {
        for agent in agents.iter_mut() {
            wait_for("the agent's LMTP socket", Duration::from_secs(60), || {
                assert!(
                    agent.process.running(),
                    "the agent exited:\n{}",
                    agent.process.log()
                );
                UnixStream::connect(&agent.lmtp).ok().map(|_| ())
            });
        }
        wait_for("provisioned mailboxes", Duration::from_secs(30), || {
            (self.maildir().join("new").is_dir() && self.mbox().is_file()).then_some(())
        });
    }

    /// Nothing was created outside the base and the victim file is unchanged.
    fn outside_untouched(&self) -> Result<(), String> {
        outside_untouched(&self.outside)
    }

    /// Debris a delivery may not leave: files in the Maildir's `tmp/`, dotlocks.
    fn assert_no_debris(&self) {
        let tmp: Vec<_> = fs::read_dir(self.maildir().join("tmp"))
            .expect("tmp/")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(tmp.is_empty(), "files left in tmp/: {tmp:?}");
        let locks: Vec<_> = fs::read_dir(self.base.join("mb.test"))
            .expect("mb.test/")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".lock"))
            .collect();
        assert!(locks.is_empty(), "dotlocks left: {locks:?}");
    }
}

/// Nothing was created in `outside` and its victim file is unchanged.
fn outside_untouched(outside: &Path) -> Result<(), String> {
    let mut names: Vec<String> = fs::read_dir(outside)
        .expect("read outside")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names != ["victim"] {
        return Err(format!("outside the base now holds {names:?}"));
    }
    let victim = fs::read(outside.join("victim")).expect("victim");
    if victim != b"original\n" {
        return Err(format!(
            "the victim outside the base was written: {:?}",
            String::from_utf8_lossy(&victim)
        ));
    }
    Ok(())
}

struct Agent {
    process: Process,
    lmtp: PathBuf,
}

/// A test message: its tag in the Subject and on every body line, about `size` bytes.
fn message(tag: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{SENDER}>\nTo: <undisclosed@races.test>\nSubject: {tag}\nMessage-ID: <{tag}@races.test>\n\n"
    )
    .into_bytes();
    let mut i = 0;
    while m.len() < size {
        m.extend_from_slice(format!("{tag} line {i} {}\n", "x".repeat(60)).as_bytes());
        i += 1;
    }
    m
}

/// How the agent stores `message` for `rcpt` (virtual(8)'s prepended headers, LF line ends).
fn stored_form(rcpt: &str, message: &[u8]) -> Vec<u8> {
    let mut out = format!("Return-Path: <{SENDER}>\nX-Original-To: {rcpt}\nDelivered-To: {rcpt}\n")
        .into_bytes();
    out.extend_from_slice(&mail::lf(message));
    out
}

fn subject(message: &[u8]) -> String {
    mail::header(message, "Subject").unwrap_or_else(|| {
        panic!(
            "a stored message without Subject:\n{}",
            String::from_utf8_lossy(&message[..message.len().min(500)])
        )
    })
}

/// Stored copies by tag; panics on a copy that is not byte-exact.
fn copies_by_tag(
    stored: &[Vec<u8>],
    rcpt: &str,
    sent: &BTreeMap<String, Vec<u8>>,
) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for copy in stored {
        let tag = subject(copy);
        let original = sent
            .get(&tag)
            .unwrap_or_else(|| panic!("{rcpt}: a stored message nobody sent: {tag}"));
        assert!(
            *copy == stored_form(rcpt, original),
            "{rcpt}: stored copy of {tag} is not byte-exact:\n{}",
            String::from_utf8_lossy(&copy[..copy.len().min(800)])
        );
        *copies.entry(tag).or_insert(0) += 1;
    }
    copies
}

/// What the sender threads record per message tag.
type Ledger<T> = Arc<Mutex<BTreeMap<String, T>>>;

/// Outcome classes of final replies.
#[derive(Debug, Default, Clone)]
struct Tally {
    delivered: usize,
    deferred: BTreeMap<String, usize>,
}

impl Tally {
    fn add(&mut self, reply: &str) {
        let code = &reply[..reply.len().min(9)];
        if reply.starts_with("250") {
            self.delivered += 1;
        } else {
            *self.deferred.entry(code.to_string()).or_insert(0) += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Symlink swaps.

/// Exchange `name` (in the directory open as `dir`) with a symlink to `target`, atomically
/// (`renameat2(RENAME_EXCHANGE)`), and back, until `stop`: the path always exists, and half the
/// time it is a symlink out of the base. Returns the number of swaps.
fn swap_loop(dir: fs::File, name: &str, target: &Path, stop: &AtomicBool) -> usize {
    let link = format!("{name}.link");
    nix::unistd::symlinkat(target, &dir, link.as_str()).expect("symlinkat");
    let exchange = || {
        renameat2(
            &dir,
            link.as_str(),
            &dir,
            name,
            RenameFlags::RENAME_EXCHANGE,
        )
        .unwrap_or_else(|e| panic!("renameat2({link}, {name}, RENAME_EXCHANGE): {e}"))
    };
    let mut swaps = 0;
    let mut round: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        exchange();
        // The symlink stays in place for 0–1 ms, the real entry for 0–3 ms (four attackers
        // together leave a mailbox's path clean only part of the time).
        round = round
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_micros((round >> 33) % 1000));
        exchange();
        swaps += 1;
        std::thread::sleep(Duration::from_micros((round >> 40) % 3000));
    }
    nix::unistd::unlinkat(&dir, link.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
        .expect("remove the attacker's symlink");
    swaps
}

/// Rename `name` away, put a symlink to `target` in its place, then remove the symlink and rename
/// the original back, until `stop`: the path is missing for a moment and a symlink for a while.
/// A delivery may create a new mailbox in that window (a Maildir is made when missing, V24; an
/// mbox file too, V18): then the original cannot go back, so the newcomer is moved aside to
/// `<name>.recreated.<n>` (it stays inside the base) and the original returns. Returns the
/// number of swaps and of mailboxes moved aside.
fn rename_away_loop(dir: fs::File, name: &str, target: &Path, stop: &AtomicBool) -> (usize, usize) {
    let away = format!("{name}.away");
    let rename =
        |from: &str, to: &str| renameat2(&dir, from, &dir, to, RenameFlags::RENAME_NOREPLACE);
    let mut swaps = 0;
    let mut recreated = 0;
    let mut round: u64 = 7;
    while !stop.load(Ordering::SeqCst) {
        rename(name, away.as_str()).unwrap_or_else(|e| panic!("rename {name} away: {e}"));
        round = round
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Every other round the path stays missing for up to 0.5 ms first.
        if round & (1 << 20) != 0 {
            std::thread::sleep(Duration::from_micros((round >> 24) % 500));
        }
        let linked = nix::unistd::symlinkat(target, &dir, name).is_ok();
        std::thread::sleep(Duration::from_micros((round >> 33) % 1000));
        if linked {
            nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .expect("remove the attacker's symlink");
        }
        // Put the original back; whatever a delivery created meanwhile moves aside.
        while let Err(errno) = rename(away.as_str(), name) {
            assert_eq!(errno, nix::errno::Errno::EEXIST, "rename {away} back");
            let aside = format!("{name}.recreated.{recreated}");
            match rename(name, aside.as_str()) {
                Ok(()) => recreated += 1,
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => panic!("move the recreated {name} aside: {e}"),
            }
        }
        swaps += 1;
        std::thread::sleep(Duration::from_micros((round >> 40) % 3000));
    }
    (swaps, recreated)
}

/// Entries of `dir` named `name` or `<name>.recreated.<n>`.
fn with_recreated(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!("{name}.recreated.");
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n == name || n.starts_with(&prefix))
                .map(|n| dir.join(n))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
}

/// How the attacker replaces mailbox paths with symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// `renameat2(RENAME_EXCHANGE)`: the path always exists.
    Exchange,
    /// Rename away, symlink, remove the symlink, rename back: the path is missing at times.
    RenameAway,
}

#[test]
fn symlink_swaps_during_delivery_never_write_outside_the_base_and_lose_no_mail() {
    symlink_attack(Attack::Exchange);
}

#[test]
fn rename_away_and_symlink_during_delivery_never_write_outside_the_base_and_lose_no_mail() {
    symlink_attack(Attack::RenameAway);
}

fn symlink_attack(attack: Attack) {
    let volume = Volume::new();
    let mut agent = volume.agent("agent");
    volume.wait_ready(&mut [&mut agent]);

    let stop = Arc::new(AtomicBool::new(false));
    let open_dir = |p: &Path| fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // (directory holding the entry, entry, symlink target outside the base)
    let swaps = [
        (
            open_dir(&volume.base.join("md.test")),
            "alice",
            volume.outside.clone(),
        ),
        (open_dir(&volume.maildir()), "new", volume.outside.clone()),
        (open_dir(&volume.maildir()), "tmp", volume.outside.clone()),
        (open_dir(&volume.base), "mb.test", volume.outside.clone()),
        (
            open_dir(&volume.base.join("mb.test")),
            "bob",
            volume.outside.join("victim"),
        ),
    ];
    let attackers: Vec<_> = swaps
        .into_iter()
        // The rename-away attacker works on the mailboxes and the mbox's parent (a delivery
        // re-creating `new/` or `tmp/` inside the Maildir is the Exchange case's business).
        .filter(|(_, name, _)| attack == Attack::Exchange || !matches!(*name, "new" | "tmp"))
        .map(|(dir, name, target)| {
            let stop = stop.clone();
            std::thread::spawn(move || match attack {
                Attack::Exchange => (name, swap_loop(dir, name, &target, &stop), 0),
                Attack::RenameAway => {
                    let (swaps, recreated) = rename_away_loop(dir, name, &target, &stop);
                    (name, swaps, recreated)
                }
            })
        })
        .collect();
    // A watcher checks the outside directory all along, not only at the end.
    let watcher = {
        let stop = stop.clone();
        let outside = volume.outside.clone();
        std::thread::spawn(move || {
            let mut checks = 0;
            while !stop.load(Ordering::SeqCst) {
                outside_untouched(&outside)?;
                checks += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok::<usize, String>(checks)
        })
    };

    const SENDERS: usize = 4;
    let per_sender = iterations(250);
    let sent: Ledger<(String, Vec<u8>, String)> = Arc::default();
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (lmtp, sent) = (agent.lmtp.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut client = Lmtp::session(&lmtp);
                for i in 0..per_sender {
                    let rcpt = if i % 2 == 0 { ALICE } else { BOB };
                    let tag = format!("swap-s{s}-m{i}");
                    let body = message(&tag, 500 + (i * 997) % 20_000);
                    let reply = client.deliver(SENDER, &[rcpt], &body).remove(0);
                    sent.lock()
                        .unwrap()
                        .insert(tag, (rcpt.to_string(), body, reply));
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender thread");
    }
    let attack_time = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let results: Vec<(&str, usize, usize)> = attackers
        .into_iter()
        .map(|a| a.join().expect("attacker thread"))
        .collect();
    let swap_counts: Vec<(&str, usize)> = results.iter().map(|r| (r.0, r.1)).collect();
    let recreated: usize = results.iter().map(|r| r.2).sum();
    let checks = watcher
        .join()
        .expect("watcher thread")
        .unwrap_or_else(|e| panic!("containment broken during the attack: {e}"));
    volume
        .outside_untouched()
        .unwrap_or_else(|e| panic!("containment broken: {e}"));

    let mut sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    let mut tally = Tally::default();
    for (tag, (_, _, reply)) in &sent {
        assert!(
            reply.starts_with("250 2.0.0") || reply.starts_with('4'),
            "{tag}: neither delivered nor deferred (mail would bounce): {reply}"
        );
        tally.add(reply);
    }

    // What landed during the attack: every 250 exactly once, nothing that was deferred.
    let originals: BTreeMap<String, Vec<u8>> = sent
        .iter()
        .map(|(tag, (_, body, _))| (tag.clone(), body.clone()))
        .collect();
    // Every copy inside the base counts: the mailbox, and any mailbox a delivery created while
    // the attacker had the original away (moved aside, inside the base).
    let check_landed = |sent: &BTreeMap<String, (String, Vec<u8>, String)>, phase: &str| {
        let maildirs: Vec<Vec<u8>> = with_recreated(&volume.base.join("md.test"), "alice")
            .iter()
            .flat_map(|dir| stored_messages(dir, MailboxFormat::Maildir))
            .collect();
        let mboxes: Vec<Vec<u8>> = with_recreated(&volume.base, "mb.test")
            .iter()
            .flat_map(|dir| with_recreated(dir, "bob"))
            .flat_map(|file| stored_messages(&file, MailboxFormat::Mbox))
            .collect();
        let maildir = copies_by_tag(&maildirs, ALICE, &originals);
        let mbox = copies_by_tag(&mboxes, BOB, &originals);
        for (tag, (rcpt, _, reply)) in sent {
            let copies = if rcpt == ALICE { &maildir } else { &mbox };
            let n = copies.get(tag).copied().unwrap_or(0);
            let want = usize::from(reply.starts_with("250"));
            assert_eq!(
                n, want,
                "{phase}: {tag} for {rcpt} ({reply}) is stored {n} times"
            );
        }
    };
    check_landed(&sent, "after the attack");

    // Postfix retries the deferred mail: with the attack over, every retry lands.
    let mut retried = 0;
    let mut client = Lmtp::session(&agent.lmtp);
    for (_, (rcpt, body, reply)) in sent.iter_mut() {
        if !reply.starts_with("250") {
            *reply = client.deliver(SENDER, &[rcpt.as_str()], body).remove(0);
            assert!(reply.starts_with("250 2.0.0"), "retry: {reply}");
            retried += 1;
        }
    }
    check_landed(&sent, "after the retries");
    volume.assert_no_debris();
    volume
        .outside_untouched()
        .unwrap_or_else(|e| panic!("containment broken: {e}"));
    let warnings = agent.process.log().matches("unsafe mailbox path").count();
    eprintln!(
        "symlink swaps ({attack:?}): {} deliveries in {attack_time:.1?} ({} delivered, deferred {:?}), swaps {swap_counts:?}, {recreated} mailboxes re-created meanwhile and moved aside, {checks} outside checks, {retried} retried and delivered, {warnings} unsafe-path log lines",
        sent.len(),
        tally.delivered,
        tally.deferred
    );
    assert!(
        swap_counts.iter().all(|(_, n)| *n > 0),
        "an attacker never swapped: {swap_counts:?}"
    );
    assert!(
        !tally.deferred.is_empty(),
        "no delivery ever met a swapped path: the attack did not overlap the deliveries"
    );
}

// ---------------------------------------------------------------------------------------------
// Dovecot reading while the agent appends.

/// Log in once, then until `stop` exists: SELECT (read-write) or EXAMINE (read-only) INBOX in
/// turn, `UID FETCH 1:* RFC822.SIZE`, and `BODY.PEEK[]` of the UIDs not seen before. Prints one
/// view per pass: `V <uidvalidity> <count>`, then `M <uid> <size>` per message, then each new
/// message's bytes (`B <uid> <length>` + bytes).
const IMAP_READER: &str = r#"
import imaplib, os, re, sys, time
host, port, user, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = sys.stdout.buffer
imap = imaplib.IMAP4(host, port)
imap.login(user, "x")
seen = set()
passes = 0
while True:
    last = os.path.exists(stop)
    typ, data = imap.select("INBOX", readonly=(passes % 2 == 1))
    if typ != "OK":
        sys.exit("SELECT failed: %r" % data)
    count = int(data[0])
    validity = imap.response("UIDVALIDITY")[1][0].decode()
    sizes = []
    if count > 0:
        typ, data = imap.uid("FETCH", "1:*", "(RFC822.SIZE)")
        if typ != "OK":
            sys.exit("FETCH failed: %r" % data)
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            m = re.search(rb"UID (\d+)", line)
            n = re.search(rb"RFC822\.SIZE (\d+)", line)
            if m and n:
                sizes.append((int(m.group(1)), int(n.group(1))))
    out.write(b"V %s %d %.3f\n" % (validity.encode(), len(sizes), time.time()))
    for uid, size in sizes:
        out.write(b"M %d %d\n" % (uid, size))
    new = [str(uid) for uid, _ in sizes if uid not in seen]
    if new:
        typ, data = imap.uid("FETCH", ",".join(new), "(BODY.PEEK[])")
        if typ != "OK":
            sys.exit("FETCH failed: %r" % data)
        for item in data:
            if isinstance(item, tuple):
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                seen.add(uid)
                out.write(b"B %d %d\n" % (uid, len(item[1])))
                out.write(item[1])
    out.flush()
    passes += 1
    if last:
        break
imap.logout()
"#;

#[derive(Debug)]
struct View {
    validity: String,
    /// (uid, RFC822.SIZE)
    messages: Vec<(u64, usize)>,
}

fn parse_views(output: &[u8]) -> (Vec<View>, BTreeMap<u64, Vec<u8>>) {
    let mut views: Vec<View> = Vec::new();
    let mut bodies = BTreeMap::new();
    let mut rest = output;
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').expect("line");
        let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
        rest = &rest[nl + 1..];
        let fields: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> u64 { fields[i].parse().expect("number") };
        match fields[0] {
            "V" => views.push(View {
                validity: fields[1].to_string(),
                messages: Vec::new(),
            }),
            "M" => views
                .last_mut()
                .expect("view")
                .messages
                .push((num(1), num(2) as usize)),
            "B" => {
                let len = num(2) as usize;
                bodies.insert(num(1), rest[..len].to_vec());
                rest = &rest[len..];
            }
            other => panic!("unexpected reader line {other:?}"),
        }
    }
    (views, bodies)
}

/// Dovecot's private mbox headers (formats-protocols.md §4.2), which it may write into the file
/// when a SELECTed mailbox is synced and never shows over IMAP.
fn without_dovecot_headers(message: &[u8]) -> Vec<u8> {
    const PRIVATE: [&str; 7] = [
        "x-imapbase:",
        "x-imap:",
        "x-uid:",
        "status:",
        "x-status:",
        "x-keywords:",
        "content-length:",
    ];
    let end = mail::find(message, b"\n\n").map_or(message.len(), |p| p + 1);
    let mut out = Vec::with_capacity(message.len());
    let mut skipping = false;
    for line in message[..end].split_inclusive(|&b| b == b'\n') {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if !continuation {
            let lower = String::from_utf8_lossy(line).to_ascii_lowercase();
            skipping = PRIVATE.iter().any(|p| lower.starts_with(p));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&message[end..]);
    out
}

#[test]
fn dovecot_reading_an_mbox_while_the_agent_appends_sees_only_whole_messages() {
    let volume = Volume::new();
    let mut agent = volume.agent("agent");
    volume.wait_ready(&mut [&mut agent]);
    // Dovecot's mbox locks are fcntl for reading and writing (tests/src/dovecot.rs), the first
    // of the agent's [fcntl, dotlock]: they exclude each other.
    let dovecot = Dovecot::start(
        &volume.dir.path().join("dovecot"),
        &[dovecot::User {
            name: BOB.into(),
            uid: UID,
            gid: GID,
            format: dovecot::Format::Mbox,
            path: volume.mbox(),
        }],
        false,
    );
    // For experiments: other Dovecot mbox lock settings as `READ|WRITE`, e.g. upstream's default
    // `VIRTMAIL_RACES_DOVECOT_LOCKS="fcntl|dotlock fcntl"` or Debian's packaged one
    // `"fcntl|fcntl dotlock"` (formats-protocols.md §4.3), applied with a reload.
    if let Ok(locks) = std::env::var("VIRTMAIL_RACES_DOVECOT_LOCKS") {
        let (read, write) = locks.split_once('|').unwrap_or((&locks, &locks));
        let conf = volume.dir.path().join("dovecot/dovecot.conf");
        let mut text = fs::read_to_string(&conf).expect("dovecot.conf");
        text.push_str(&format!(
            "mbox_read_locks = {read}\nmbox_write_locks = {write}\n"
        ));
        fs::write(&conf, text).expect("dovecot.conf");
        let reload = Command::new("doveadm")
            .arg("-c")
            .arg(&conf)
            .arg("reload")
            .output()
            .expect("doveadm reload");
        assert!(reload.status.success(), "doveadm reload: {reload:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let stop_file = volume.dir.path().join("reader.stop");
    let mut reader = Command::new("python3")
        .arg("-c")
        .arg(IMAP_READER)
        .args(["127.0.0.1", &dovecot.imap_port().to_string(), BOB])
        .arg(&stop_file)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the IMAP reader (apt-get install python3)");
    // Collect the reader's output as it comes; writing starts once it has made its first view.
    let (first_view, first_view_seen) = std::sync::mpsc::channel();
    let mut reader_stdout = reader.stdout.take().expect("reader stdout");
    let collector = std::thread::spawn(move || {
        let mut output = Vec::new();
        let mut buffer = [0u8; 65536];
        let mut signalled = false;
        loop {
            match std::io::Read::read(&mut reader_stdout, &mut buffer) {
                Ok(0) | Err(_) => return output,
                Ok(n) => output.extend_from_slice(&buffer[..n]),
            }
            if !signalled && output.contains(&b'\n') {
                signalled = true;
                let _ = first_view.send(());
            }
        }
    });
    let _ = first_view_seen.recv_timeout(Duration::from_secs(30));

    // Paced appends (a few ms apart), so that reads and appends interleave for a while.
    const WRITERS: usize = 2;
    let per_writer = iterations(100);
    let sent: Ledger<(Vec<u8>, String)> = Arc::default();
    let slowest: Arc<Mutex<Duration>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (lmtp, sent, slowest) = (agent.lmtp.clone(), sent.clone(), slowest.clone());
            std::thread::spawn(move || {
                let mut client = Lmtp::session(&lmtp);
                for i in 0..per_writer {
                    let tag = format!("imap-w{w}-m{i}");
                    // 1 KiB .. 100 KiB: long appends widen the window a reader could fall into.
                    let body = message(&tag, 1024 + (i * 7919 + w * 104_729) % 100_000);
                    let started = Instant::now();
                    let reply = client.deliver(SENDER, &[BOB], &body).remove(0);
                    let took = started.elapsed();
                    let mut slowest = slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                    drop(slowest);
                    sent.lock().unwrap().insert(tag, (body, reply));
                    std::thread::sleep(Duration::from_millis(2 + (i as u64 * 7) % 10));
                }
            })
        })
        .collect();
    let started = Instant::now();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let writing = started.elapsed();
    fs::write(&stop_file, b"").expect("stop file");
    let status = reader.wait().expect("IMAP reader");
    let stdout = collector.join().expect("reader output");
    let mut stderr = String::new();
    if let Some(mut err) = reader.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    assert!(
        status.success(),
        "IMAP reader failed: {stderr}\n{}",
        dovecot.log()
    );
    let sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    for (tag, (_, reply)) in &sent {
        // Dovecot holds its fcntl lock only briefly; the agent waits for it (20 s budget).
        assert!(reply.starts_with("250 2.0.0"), "{tag}: {reply}");
    }

    // The final mailbox on disk: every message exactly once, byte for byte (Dovecot's own
    // metadata headers aside), in some append order.
    let file = fs::read(volume.mbox()).expect("mbox");
    let stored: Vec<Vec<u8>> = split_mbox(&file)
        .iter()
        .map(|m| without_dovecot_headers(m))
        .collect();
    let originals: BTreeMap<String, Vec<u8>> = sent
        .iter()
        .map(|(tag, (body, _))| (tag.clone(), body.clone()))
        .collect();
    let copies = copies_by_tag(&stored, BOB, &originals);
    assert_eq!(copies.len(), sent.len(), "messages missing from the mbox");
    assert!(copies.values().all(|&n| n == 1), "duplicates: {copies:?}");
    let final_order: Vec<String> = stored.iter().map(|m| subject(m)).collect();

    // Every IMAP view: the same UIDVALIDITY, UIDs increasing, never fewer messages than the
    // previous view, each message whole and byte-exact, and the messages in file order: a prefix
    // of the final mailbox.
    let (views, bodies) = parse_views(&stdout);
    assert!(
        views.len() >= 2,
        "the reader made only {} passes",
        views.len()
    );
    let mut first_seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut uid_tag: BTreeMap<u64, String> = BTreeMap::new();
    for (uid, body) in &bodies {
        let tag = subject(body);
        let original = originals
            .get(&tag)
            .unwrap_or_else(|| panic!("IMAP showed a message nobody sent: {tag}"));
        assert!(
            *body == mail::crlf(&stored_form(BOB, original)),
            "IMAP showed UID {uid} ({tag}) differently from what was delivered (half a message?):\n{}",
            String::from_utf8_lossy(&body[..body.len().min(600)])
        );
        uid_tag.insert(*uid, tag);
    }
    let mut previous = 0;
    let mut growth = 0;
    for (n, view) in views.iter().enumerate() {
        assert_eq!(
            view.validity, views[0].validity,
            "view {n}: UIDVALIDITY changed"
        );
        assert!(
            view.messages.len() >= previous,
            "view {n}: {} messages after {previous}",
            view.messages.len()
        );
        if view.messages.len() > previous {
            growth += 1;
        }
        previous = view.messages.len();
        let mut last_uid = 0;
        for (k, &(uid, size)) in view.messages.iter().enumerate() {
            assert!(uid > last_uid, "view {n}: UIDs out of order");
            last_uid = uid;
            let first = *first_seen.entry(uid).or_insert(size);
            assert_eq!(first, size, "view {n}: UID {uid} changed its size");
            let body = bodies
                .get(&uid)
                .unwrap_or_else(|| panic!("view {n}: UID {uid} was never fetched"));
            assert_eq!(
                body.len(),
                size,
                "view {n}: UID {uid}: RFC822.SIZE is not its length"
            );
            assert_eq!(
                uid_tag.get(&uid),
                final_order.get(k),
                "view {n}: message {k} is not the mailbox's message {k}"
            );
        }
    }
    assert_eq!(
        previous,
        sent.len(),
        "the last view does not show every message"
    );
    // And the final state read back through IMAP once more, the usual way.
    let fetched = dovecot.fetch(BOB);
    assert_eq!(fetched.messages.len(), sent.len());
    eprintln!(
        "dovecot reader: {} messages appended ({} bytes) in {writing:.1?} (slowest delivery {:.1?}), {} IMAP views ({} saw new mail), all prefixes; Dovecot wrote X-UID into {} messages of the file",
        sent.len(),
        file.len(),
        *slowest.lock().unwrap(),
        views.len(),
        growth,
        split_mbox(&file)
            .iter()
            .filter(|m| mail::header(m, "X-UID").is_some())
            .count()
    );
}

// ---------------------------------------------------------------------------------------------
// Two agents, one volume.

#[test]
fn two_agents_on_one_volume_deliver_to_the_same_mailboxes_exactly_once() {
    let volume = Volume::new();
    // Both start at once: their provisioning races too.
    let mut one = volume.agent("agent-one");
    let mut two = volume.agent("agent-two");
    volume.wait_ready(&mut [&mut one, &mut two]);

    const SENDERS: usize = 4;
    let per_sender = iterations(40);
    let sent: Ledger<(Vec<u8>, Vec<String>)> = Arc::default();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let lmtp = if s % 2 == 0 { &one.lmtp } else { &two.lmtp }.clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut client = Lmtp::session(&lmtp);
                for i in 0..per_sender {
                    let tag = format!("two-s{s}-m{i}");
                    let body = message(&tag, 2000 + (i * 4099 + s * 7) % 60_000);
                    let replies = client.deliver(SENDER, &[ALICE, BOB], &body);
                    sent.lock().unwrap().insert(tag, (body, replies));
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender thread");
    }
    let sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    for (tag, (_, replies)) in &sent {
        for reply in replies {
            assert!(reply.starts_with("250 2.0.0"), "{tag}: {reply}");
        }
    }
    let originals: BTreeMap<String, Vec<u8>> = sent
        .iter()
        .map(|(tag, (body, _))| (tag.clone(), body.clone()))
        .collect();
    let maildir = copies_by_tag(
        &stored_messages(&volume.maildir(), MailboxFormat::Maildir),
        ALICE,
        &originals,
    );
    let mbox = copies_by_tag(
        &stored_messages(&volume.mbox(), MailboxFormat::Mbox),
        BOB,
        &originals,
    );
    for tag in originals.keys() {
        assert_eq!(maildir.get(tag), Some(&1), "{tag} in the Maildir");
        assert_eq!(mbox.get(tag), Some(&1), "{tag} in the mbox");
    }
    // Every body line of every mbox message carries its own tag: nothing interleaved.
    for copy in stored_messages(&volume.mbox(), MailboxFormat::Mbox) {
        let tag = subject(&copy);
        let text = String::from_utf8_lossy(&copy).into_owned();
        for line in text.lines().filter(|l| l.contains(" line ")) {
            assert!(line.starts_with(&tag), "{tag}: interleaved line {line:?}");
        }
    }
    // Maildir names are unique per agent (P<pid>), and both agents delivered.
    let names: Vec<String> = fs::read_dir(volume.maildir().join("new"))
        .expect("new/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for agent in [&one, &two] {
        let pid = format!("P{}Q", agent.process.pid());
        assert!(
            names.iter().any(|n| n.contains(&pid)),
            "no Maildir file from the agent with pid {}",
            agent.process.pid()
        );
    }
    let owner = fs::metadata(volume.mbox()).expect("mbox").uid();
    assert_eq!(owner, UID);
    volume.assert_no_debris();
    volume
        .outside_untouched()
        .unwrap_or_else(|e| panic!("containment broken: {e}"));
    let file = fs::read(volume.mbox()).expect("mbox");
    eprintln!(
        "two agents: {} messages x 2 recipients through 2 agents, {} Maildir files, {} mbox messages, {} mbox bytes",
        sent.len(),
        names.len(),
        split_mbox(&file).len(),
        file.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A stale dotlock through LMTP, with the agent's default timings.

#[test]
fn dotlock_left_by_a_dead_process_defers_with_default_timings_and_the_retry_lands() {
    use std::os::unix::fs::OpenOptionsExt;
    let volume = Volume::new();
    let mut agent = volume.agent("agent");
    volume.wait_ready(&mut [&mut agent]);
    // What a killed delivery leaves: `<mbox>.lock`, mode 0, the recipient's, an mtime an hour
    // old. Its ctime is now: Postfix (and the agent) judge staleness by ctime against
    // stale_lock_time (500 s), so it is not stale yet.
    let lock = volume.base.join("mb.test/bob.lock");
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&lock)
        .expect("plant the dead process's dotlock");
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .expect("old mtime");
    drop(file);
    std::os::unix::fs::chown(&lock, Some(UID), Some(GID)).expect("chown lock");

    let blocked = {
        let lmtp = agent.lmtp.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let reply = Lmtp::session(&lmtp)
                .deliver(SENDER, &[BOB], &message("locked-out", 2000))
                .remove(0);
            (reply, started.elapsed())
        })
    };
    // Meanwhile other mailboxes are not held up.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let other = Lmtp::session(&agent.lmtp)
        .deliver(SENDER, &[ALICE], &message("not-held-up", 2000))
        .remove(0);
    assert!(other.starts_with("250 2.0.0"), "{other}");
    let other_took = started.elapsed();

    let (reply, waited) = blocked.join().expect("blocked delivery");
    assert!(
        reply.starts_with("451 4.2.0") && reply.contains("bob.lock: File exists"),
        "a dotlock younger than 500 s must defer the delivery 4.2.0 after the lock timeout: {reply}"
    );
    assert!(
        waited >= Duration::from_secs(19),
        "deferred after {waited:?}, before the 20 s lock timeout"
    );
    assert!(lock.exists(), "the agent removed a lock that was not stale");
    assert_eq!(
        fs::metadata(volume.mbox()).expect("mbox").len(),
        0,
        "mail was written without the lock"
    );
    // The lock goes (500 s later, or an administrator removes it): Postfix's retry lands once.
    fs::remove_file(&lock).expect("remove the dead lock");
    let retry = Lmtp::session(&agent.lmtp)
        .deliver(SENDER, &[BOB], &message("locked-out", 2000))
        .remove(0);
    assert!(retry.starts_with("250 2.0.0"), "{retry}");
    let stored = stored_messages(&volume.mbox(), MailboxFormat::Mbox);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0], stored_form(BOB, &message("locked-out", 2000)));
    volume.assert_no_debris();
    eprintln!(
        "stale dotlock via LMTP: deferred after {waited:.1?} ({reply}); another mailbox delivered in {other_took:.1?} meanwhile; retry delivered"
    );
}
