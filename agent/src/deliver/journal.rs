//! The mbox intent journal: an append cut short by a crash of the agent is undone by the next
//! delivery, as a failed write is undone at once (virtual(8) V22).
//!
//! # Security
//!
//! The journal lives beside the mbox, owned by the recipient, so its owner can write anything
//! into it: a record is only acted on when it names the very mbox being delivered to and every
//! byte it would cut hash-matches the announced append; all numbers are bounded before use
//! ([`AppendIntent::parse`]). A dotlock is removed only when the journal's claim matches the lock
//! file exactly and its owner is provably dead, under the directory lock of
//! [`lock::break_dotlock_if`]. Runs under the recipient's file system identity.
//!
//! # Crash safety
//!
//! In-process truncation cannot run when the agent is killed (`kill -9`, OOM killer, node
//! crash) in the middle of an append, so every append is announced in an *intent journal*
//! first: `.<mbox>.virtmail-append` beside the mbox, owned by the recipient, 0600, created on
//! the first delivery and kept (it is empty between deliveries). Under the mailbox locks:
//!
//! 1. **Recover.** A non-empty journal is an append that never finished cleanly. Its record
//!    names the mbox (device, inode), the length `L` before the append, the length `n` of the
//!    data, and a hash of every piece of the data between `L`, the 4 KiB boundaries of the file
//!    and `L + n`. The file is truncated back to `L` only when *all* of these hold: same inode;
//!    current size strictly between `L` and `L + n` (a complete append is kept: its reply may
//!    have been sent, and a duplicate is better than a loss); the size falls on one of those
//!    boundaries (the kernel stops a killed `write(2)` at a page boundary); and every piece
//!    between `L` and the size hashes to the recorded value, i.e. the bytes there are provably
//!    our unacknowledged partial write and nothing anyone appended or rewrote afterwards (a
//!    Dovecot expunge, an MDA that ignored a stale lock). Anything else is left alone and logged.
//!    Then the journal is emptied.
//! 2. **Announce.** The record is written to the journal and `fdatasync`ed (on a new journal the
//!    directory is fsynced too) before the first byte of the append, so it survives power loss.
//! 3. **Append, fsync**, then empty the journal (no fsync needed: a record left behind by a
//!    power loss describes a complete append, which recovery keeps) and only then report success.
//!
//! **Dotlocks of dead deliveries.** A killed delivery also leaves its `<mbox>.lock` behind,
//! which would block the mailbox for the stale time (500 s, as after a crashed virtual(8)).
//! Right after taking a dotlock, a delivery records it in the journal's first 256 bytes: the
//! lock's inode and ctime, its pid, pid namespace, host name and process start. A delivery that
//! finds a dotlock in its way removes it at once only when that record matches the lock file
//! exactly and its owner is provably dead: same host and pid namespace, and the pid no longer
//! exists (or it is our own pid with another process start: a container restart, where the
//! agent is always pid 1). Any other lock (Postfix, Dovecot, mutt, a live agent, or one whose
//! owner cannot be judged) is waited for as before. The claim is written right after the lock is
//! created and withdrawn only after the lock is removed (and only while the slot still holds
//! it), so a crash at any moment in between leaves a lock its claim names. A claim that outlives
//! its lock (a crash right after the removal) names a file that no longer exists: a breaker
//! needs the same inode and the same ctime, and the owner dead. Only a crash between creating
//! the lock and writing the claim (two system calls) leaves a lock that waits for the stale
//! time. The judgement and the removal happen under
//! the directory `flock` of [`lock::break_dotlock_if`], like the stale-time rule, so no breaker
//! of ours removes a fresh lock another just took.
//!
//! Acknowledged mail is never truncated: success is reported after the journal was emptied, and
//! recovery only cuts bytes that hash-match the announced, incomplete append. Where the
//! recipient cannot create the journal (an mbox parent directory it may not write), delivery
//! works as before without crash recovery.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::LazyLock;
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::Target;
use crate::fs::containment::{self, open_beneath};
use crate::fs::layout::MAIL_FILE_MODE;
use crate::fs::{lock, read_at, write_all_at};

/// The first bytes of the journal: who holds the dotlock (padded with NULs).
const SLOT: u64 = 256;

/// This process: its start (unique with its pid) and pid namespace.
static PROCESS: LazyLock<(u128, String)> = LazyLock::new(|| {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (start, namespace)
});

/// The dotlock owner recorded in a journal's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    ino: u64,
    ctime: (i64, i64),
    pid: u32,
    namespace: String,
    start: u128,
    host: String,
}

impl Owner {
    fn line(&self) -> String {
        format!(
            "lock {} {} {} pid {} ns {} start {} host {}\n",
            self.ino, self.ctime.0, self.ctime.1, self.pid, self.namespace, self.start, self.host
        )
    }

    fn parse(slot: &[u8]) -> Option<Owner> {
        let end = slot.iter().position(|&b| b == b'\n')?;
        let text = std::str::from_utf8(&slot[..end]).ok()?;
        let w: Vec<&str> = text.split(' ').collect();
        if w.len() != 12 || w[0] != "lock" || w[4] != "pid" || w[6] != "ns" || w[8] != "start" {
            return None;
        }
        (w[10] == "host").then_some(())?;
        Some(Owner {
            ino: w[1].parse().ok()?,
            ctime: (w[2].parse().ok()?, w[3].parse().ok()?),
            pid: w[5].parse().ok()?,
            namespace: w[7].to_string(),
            start: w[9].parse().ok()?,
            host: w[11].to_string(),
        })
    }

    /// Whether the owner is provably gone (see "Crash safety").
    fn is_dead(&self, host: &str) -> bool {
        let (start, namespace) = &*PROCESS;
        if self.host != host || namespace.is_empty() || self.namespace != *namespace {
            return false;
        }
        let own = rustix::process::getpid().as_raw_nonzero().get() as u32;
        if self.pid == own {
            return self.start != *start;
        }
        rustix::process::Pid::from_raw(self.pid as i32)
            .is_some_and(|p| rustix::process::test_kill_process(p) == Err(Errno::SRCH))
    }
}

/// Pieces of an append are cut at multiples of this in the file (the page size): a killed
/// `write(2)` stops at a page (folio) boundary.
const PIECE: u64 = 4096;
/// First line of a journal record.
const JOURNAL_MAGIC: &str = "virtmail-mbox-append 1";
/// A journal larger than this is not ours (50 MB of data needs about 210 kB).
const JOURNAL_LIMIT: usize = 16 << 20;

/// The intent journal of one mbox (see "Crash safety" above).
#[derive(Debug)]
pub(super) struct Journal {
    fd: OwnedFd,
    name: String,
}

/// The boundaries of the pieces of an append of `length` bytes at `from` (none when the end
/// does not fit in a `u64`).
fn piece_ends(from: u64, length: u64) -> impl Iterator<Item = u64> {
    let end = from.checked_add(length).unwrap_or(from);
    let mut at = from;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        at = (at / PIECE + 1).saturating_mul(PIECE).min(end);
        Some(at)
    })
}

/// How many pieces [`piece_ends`] yields, computed without walking them (a record's numbers come
/// from a file the mailbox owner can write). `None` when `from + length` overflows.
fn piece_count(from: u64, length: u64) -> Option<u64> {
    let end = from.checked_add(length)?;
    if length == 0 {
        return Some(0);
    }
    // Pieces end at every multiple of PIECE strictly inside (from, end), and at end.
    let inner = (end - 1) / PIECE - from / PIECE;
    Some(inner + 1)
}

fn piece_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A parsed append record of the mbox journal (see "Crash safety"). Public for the fuzz target
/// of its parser; nothing outside this module acts on it.
#[derive(Debug, PartialEq, Eq)]
pub struct AppendIntent {
    /// Device of the mbox the append was announced for.
    pub dev: u64,
    /// Inode of that mbox.
    pub ino: u64,
    /// The mbox's length before the append.
    pub from: u64,
    /// Bytes of the append; `from + length` fits in a `u64`.
    pub length: u64,
    /// Hash of each piece: one per 4 KiB boundary of the file inside the append, and the end.
    pub hashes: Vec<String>,
}

/// The journal record announcing an append of `data` at `from` to the mbox `dev`/`ino`.
pub fn append_record(dev: u64, ino: u64, from: u64, data: &[u8]) -> String {
    let mut record = format!(
        "{JOURNAL_MAGIC}\ndev {dev} ino {ino}\nfrom {from} length {}\n",
        data.len()
    );
    let mut start = 0usize;
    for end in piece_ends(from, data.len() as u64) {
        let end = (end - from) as usize;
        record.push_str(&piece_hash(&data[start..end]));
        record.push('\n');
        start = end;
    }
    record.push_str("end\n");
    record
}

/// `<a> <x> <b> <y>` with decimal `x` and `y`.
fn two_numbers(line: &str, a: &str, b: &str) -> Option<(u64, u64)> {
    let mut w = line.split(' ');
    (w.next()? == a).then_some(())?;
    let x = w.next()?.parse().ok()?;
    (w.next()? == b).then_some(())?;
    let y = w.next()?.parse().ok()?;
    w.next().is_none().then_some((x, y))
}

impl AppendIntent {
    /// The mbox a record names (its device and inode), read before anything else so that a
    /// record for another file is never interpreted further.
    pub fn names(text: &str) -> Option<(u64, u64)> {
        let mut lines = text.lines();
        (lines.next()? == JOURNAL_MAGIC).then_some(())?;
        two_numbers(lines.next()?, "dev", "ino")
    }

    /// Parse a complete record. Every number is checked: `from + length` must fit, the piece
    /// count is computed (never iterated) and must equal the hash lines present, so the work is
    /// bounded by the length of `text`. A torn record (no `end`) is `None`: the append it
    /// announces never started.
    pub fn parse(text: &str) -> Option<AppendIntent> {
        let (dev, ino) = AppendIntent::names(text)?;
        let mut lines = text.lines().skip(2);
        let (from, length) = two_numbers(lines.next()?, "from", "length")?;
        let pieces = piece_count(from, length)?;
        let mut hashes = Vec::new();
        for line in lines.by_ref() {
            if line == "end" {
                return (hashes.len() as u64 == pieces).then_some(AppendIntent {
                    dev,
                    ino,
                    from,
                    length,
                    hashes,
                });
            }
            let hash_like = line.len() == 16 && line.bytes().all(|b| b.is_ascii_hexdigit());
            if !hash_like || hashes.len() as u64 >= pieces {
                return None;
            }
            hashes.push(line.to_string());
        }
        None
    }
}

impl Journal {
    /// Open (or create, as the recipient) the journal beside mbox `name`. `None` when it cannot
    /// be used: then delivery goes on without crash recovery.
    pub(super) fn open(parent: BorrowedFd<'_>, name: &str, target: &Target) -> Option<Journal> {
        let journal_name = virtmail_crds::contract::journal_name(name);
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(parent, journal_name.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let fd = rustix::fs::openat(
                    parent,
                    journal_name.as_str(),
                    flags | OFlags::CREATE | OFlags::EXCL,
                    Mode::from_raw_mode(MAIL_FILE_MODE),
                )
                .ok()?;
                // The new name must survive power loss before it is relied on.
                let dir = containment::open_dir(parent, ".").ok()?;
                rustix::fs::fsync(&dir).ok()?;
                fd
            }
            Err(_) => return None,
        };
        let stat = rustix::fs::fstat(&fd).ok()?;
        let usable = FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
            && stat.st_nlink == 1
            && stat.st_uid == target.uid;
        usable.then(|| Journal {
            fd,
            name: format!("{}/.{name}.virtmail-append", parent_dir(&target.full_path)),
        })
    }

    fn size(&self) -> u64 {
        rustix::fs::fstat(&self.fd).map_or(0, |s| s.st_size as u64)
    }

    /// Remove `<name>.lock` if the slot proves it is the lock of a dead delivery of ours.
    pub(super) fn break_orphaned_dotlock(
        &self,
        parent: BorrowedFd<'_>,
        name: &str,
        target: &Target,
        host: &str,
        deadline: Instant,
    ) {
        let lock_name = virtmail_crds::contract::dotlock_name(name);
        if rustix::fs::statat(parent, lock_name.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_err() {
            return;
        }
        let mut slot = [0u8; SLOT as usize];
        let Ok(n) = rustix::io::pread(&self.fd, &mut slot, 0) else {
            return;
        };
        let Some(owner) = Owner::parse(&slot[..n]) else {
            return;
        };
        let orphaned = |lock: &Stat| {
            FileType::from_raw_mode(lock.st_mode) == FileType::RegularFile
                && owner.ino == lock.st_ino
                && owner.ctime == (lock.st_ctime, lock.st_ctime_nsec as i64)
                && owner.is_dead(host)
        };
        // Judged under the directory lock (breakers are serialized there); no lock of this
        // process is held while waiting for it, as a user can hold it.
        match lock::break_dotlock_if(parent, &lock_name, target.uid, deadline, orphaned) {
            Ok(true) => tracing::warn!(
                "{}.lock: removed the dotlock of a delivery that died (pid {})",
                target.full_path,
                owner.pid
            ),
            Ok(false) => {}
            Err(errno) => tracing::warn!(
                "{}.lock: cannot remove the dotlock of a dead delivery: {errno}",
                target.full_path
            ),
        }
    }

    /// Record the dotlock just taken as ours (no fsync: only a process crash needs it). The
    /// returned [`Claim`] withdraws the record when dropped, which must be after the lock is
    /// removed.
    pub(super) fn claim_dotlock(&self, lock: &Stat, host: &str) -> Option<Claim<'_>> {
        let (start, namespace) = &*PROCESS;
        let line = Owner {
            ino: lock.st_ino,
            ctime: (lock.st_ctime, lock.st_ctime_nsec as i64),
            pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
            namespace: namespace.clone(),
            start: *start,
            host: host.to_string(),
        }
        .line();
        // A host name with spaces or a very long one cannot be recorded: no claim, no breaking.
        if line.len() > SLOT as usize || host.contains([' ', '\n']) {
            return None;
        }
        let mut slot = [0u8; SLOT as usize];
        slot[..line.len()].copy_from_slice(line.as_bytes());
        (rustix::io::pwrite(&self.fd, &slot, 0) == Ok(slot.len())).then_some(Claim {
            journal: self,
            slot,
        })
    }

    /// Step 1: undo a provably partial, unacknowledged append of a crashed delivery. `file` is
    /// the locked mbox `name` in `parent` (opened for appending only).
    pub(super) fn recover(
        &self,
        parent: BorrowedFd<'_>,
        name: &str,
        file: &OwnedFd,
        target: &Target,
    ) {
        let size = self.size();
        if size <= SLOT {
            return;
        }
        let text = if size - SLOT <= JOURNAL_LIMIT as u64 {
            read_all(&self.fd, SLOT, (size - SLOT) as usize)
        } else {
            None
        };
        let Ok(now) = rustix::fs::fstat(file) else {
            return;
        };
        // The file named comes first: a record for another file is debris (a copied or planted
        // journal), reported and never interpreted.
        let text = text.unwrap_or_default();
        match AppendIntent::names(&text) {
            Some(named) if named == (now.st_dev, now.st_ino) => {}
            named => {
                tracing::warn!(
                    "{}: journal {} does not describe this mbox ({}); ignored and overwritten",
                    target.full_path,
                    self.name,
                    match named {
                        Some((dev, ino)) => format!("it names device {dev} inode {ino}"),
                        None => "no complete record".to_string(),
                    }
                );
                self.clear();
                return;
            }
        }
        let intent = AppendIntent::parse(&text);
        if let Some(intent) = intent {
            let size = now.st_size as u64;
            // `parse` guarantees the sum fits; `from` is bounded by the file's real size here.
            if size > intent.from && size < intent.from + intent.length {
                // The append-only descriptor cannot be read: a second one, for the same inode.
                let reader = open_beneath(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
                    Mode::empty(),
                )
                .ok()
                .filter(|fd| {
                    rustix::fs::fstat(fd)
                        .is_ok_and(|s| s.st_dev == intent.dev && s.st_ino == intent.ino)
                });
                if reader.is_some_and(|reader| verify(&reader, &intent, size)) {
                    let truncated = rustix::fs::ftruncate(file, intent.from)
                        .and_then(|()| rustix::fs::fsync(file));
                    match truncated {
                        Ok(()) => tracing::warn!(
                            "{}: removed {} bytes of an append interrupted by a crash (never acknowledged; the sender retries)",
                            target.full_path,
                            size - intent.from
                        ),
                        Err(errno) => {
                            // Keep the journal: the next delivery tries again.
                            tracing::warn!(
                                "{}: cannot truncate an append interrupted by a crash: {errno}",
                                target.full_path
                            );
                            return;
                        }
                    }
                } else {
                    tracing::warn!(
                        "{}: {} bytes after offset {} do not match the append interrupted by a crash; left as they are",
                        target.full_path,
                        size - intent.from,
                        intent.from
                    );
                }
            }
        }
        self.clear();
    }

    /// Step 2: announce an append of `data` at `from`, durably.
    pub(super) fn announce(&self, stat: &Stat, from: u64, data: &[u8]) -> Result<(), Errno> {
        let record = append_record(stat.st_dev, stat.st_ino, from, data);
        rustix::fs::ftruncate(&self.fd, SLOT)?;
        write_all_at(&self.fd, record.as_bytes(), SLOT)?;
        rustix::fs::fdatasync(&self.fd)
    }

    /// Step 3: the append is complete (or undone): forget it. The dotlock claim stays until the
    /// dotlock is gone.
    pub(super) fn clear(&self) {
        let keep = self.size().min(SLOT);
        if let Err(errno) = rustix::fs::ftruncate(&self.fd, keep) {
            tracing::warn!("{}: cannot empty the journal: {errno}", self.name);
        }
    }
}

/// A dotlock claim in the journal's slot; withdrawn on drop, after the lock was removed, and
/// only while the slot still holds it (a later holder's claim is left alone).
#[derive(Debug)]
pub(super) struct Claim<'a> {
    journal: &'a Journal,
    slot: [u8; SLOT as usize],
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut now = [0u8; SLOT as usize];
        if rustix::io::pread(&self.journal.fd, &mut now, 0) != Ok(now.len()) || now != self.slot {
            return;
        }
        if self.journal.size() <= SLOT {
            let _ = rustix::fs::ftruncate(&self.journal.fd, 0);
        } else {
            let _ = rustix::io::pwrite(&self.journal.fd, &[0u8; SLOT as usize], 0);
        }
    }
}

/// Whether the bytes of `file` from `intent.from` to `size` are exactly the first pieces of the
/// announced append.
fn verify(file: &OwnedFd, intent: &AppendIntent, size: u64) -> bool {
    let mut start = intent.from;
    for (end, want) in piece_ends(intent.from, intent.length).zip(&intent.hashes) {
        if end > size {
            // The size is not on a piece boundary: not a write the kernel stopped.
            return false;
        }
        let mut piece = vec![0u8; (end - start) as usize];
        if read_at(file, &mut piece, start) != Ok(piece.len()) {
            return false;
        }
        if piece_hash(&piece) != *want {
            return false;
        }
        if end == size {
            return true;
        }
        start = end;
    }
    false
}

fn read_all(fd: &OwnedFd, offset: u64, size: usize) -> Option<String> {
    let mut buffer = vec![0u8; size];
    let filled = read_at(fd, &mut buffer, offset).ok()?;
    buffer.truncate(filled);
    String::from_utf8(buffer).ok()
}

fn parent_dir(full_path: &str) -> &str {
    full_path.rsplit_once('/').map_or(".", |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_end_on_page_boundaries_and_at_the_end() {
        assert_eq!(
            piece_ends(4000, 10_000).collect::<Vec<_>>(),
            vec![4096, 8192, 12288, 14000]
        );
        assert_eq!(piece_ends(8192, 100).collect::<Vec<_>>(), vec![8292]);
        assert_eq!(piece_ends(0, 0).count(), 0);
    }

    #[test]
    fn dotlock_owner_round_trips_and_only_dead_owners_are_dead() {
        let (start, namespace) = PROCESS.clone();
        let own = rustix::process::getpid().as_raw_nonzero().get() as u32;
        let owner = Owner {
            ino: 7,
            ctime: (1_700_000_000, 123),
            pid: own,
            namespace: namespace.clone(),
            start,
            host: "mx.test".into(),
        };
        assert_eq!(Owner::parse(owner.line().as_bytes()), Some(owner.clone()));
        assert!(!owner.is_dead("mx.test"), "this very process");
        let earlier = Owner {
            start: start - 1,
            ..owner.clone()
        };
        assert!(
            earlier.is_dead("mx.test"),
            "our pid, another start: a restart"
        );
        assert!(!earlier.is_dead("other.host"));
        let elsewhere = Owner {
            namespace: "pid:[1]".into(),
            ..owner.clone()
        };
        assert!(
            !elsewhere.is_dead("mx.test"),
            "another pid namespace: cannot judge"
        );
        let pid1 = Owner {
            pid: 1,
            ..owner.clone()
        };
        assert!(!pid1.is_dead("mx.test"), "pid 1 lives");
        assert_eq!(Owner::parse(b"lock 1 2\n"), None);
        assert_eq!(Owner::parse(&[0u8; 256]), None);
    }

    #[test]
    fn piece_count_is_what_piece_ends_yields() {
        for from in [0u64, 1, 4095, 4096, 4097, 10_000, 1 << 40] {
            for length in [0u64, 1, 95, 96, 4095, 4096, 4097, 100_000] {
                assert_eq!(
                    piece_count(from, length),
                    Some(piece_ends(from, length).count() as u64),
                    "{from} {length}"
                );
            }
        }
        assert_eq!(piece_count(u64::MAX, 1), None);
        assert_eq!(piece_ends(u64::MAX, 1).count(), 0);
    }

    #[test]
    fn journal_numbers_are_bounded_by_the_record_never_iterated() {
        let started = Instant::now();
        for (from, length) in [(0, u64::MAX), (u64::MAX - 10, 4096), (u64::MAX, u64::MAX)] {
            let record = format!(
                "{JOURNAL_MAGIC}\ndev 1 ino 2\nfrom {from} length {length}\n0123456789abcdef\nend\n"
            );
            assert_eq!(AppendIntent::parse(&record), None, "{from} {length}");
            assert_eq!(AppendIntent::names(&record), Some((1, 2)));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let data = vec![b'x'; 10_000];
        let record = append_record(3, 4, 4000, &data);
        let intent = AppendIntent::parse(&record).expect("our own record");
        assert_eq!(
            (intent.from, intent.length, intent.hashes.len()),
            (4000, 10_000, 4)
        );
        let not_hex = record.replacen(&intent.hashes[0], "zzzzzzzzzzzzzzzz", 1);
        assert_eq!(AppendIntent::parse(&not_hex), None);
    }

    #[test]
    fn journal_records_parse_only_when_complete() {
        let record = format!(
            "{JOURNAL_MAGIC}\ndev 1 ino 2\nfrom 4000 length 200\n{}\n{}\nend\n",
            piece_hash(b"a"),
            piece_hash(b"b")
        );
        let intent = AppendIntent::parse(&record).expect("complete record");
        assert_eq!(
            (intent.dev, intent.ino, intent.from, intent.length),
            (1, 2, 4000, 200)
        );
        assert_eq!(intent.hashes.len(), 2);
        assert_eq!(
            AppendIntent::parse(&record[..record.len() - 4]),
            None,
            "torn"
        );
        assert_eq!(AppendIntent::parse("From someone\n"), None, "not ours");
        let wrong_count = record.replacen(&format!("{}\n", piece_hash(b"b")), "", 1);
        assert_eq!(AppendIntent::parse(&wrong_count), None);
    }
}
