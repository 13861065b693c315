//! mbox locks: dotlock, flock and fcntl, in Postfix's order (spec V19).
//!
//! # Security
//!
//! The dotlock is created with `O_CREAT | O_EXCL` (which never follows a symlink) in the
//! already-opened, contained parent directory, as the recipient, with mode 0 like Postfix.
//! A stale lock (ctime older than the stale time, 500 s) is removed; nothing else is.
//!
//! Breaking a stale lock is "stat, then unlink by name", which races: a delivery that judged the
//! old lock stale could unlink a fresh lock another delivery created after the old one was gone,
//! and both would then append at once (Postfix's `dot_lockfile()` has the same window). Our
//! deliveries therefore break a lock only while holding an exclusive `flock` on the parent
//! directory and after checking again under it, so among this agent's threads and every other
//! virtmail process on the volume only one breaks a given stale lock and nobody removes a
//! fresh one. Releasing removes the lock only if it is still the file we created.
//!
//! Kernel locks differ from Postfix in one deliberate way: the fcntl lock is an *open file
//! description* lock (`F_OFD_SETLK`). It conflicts with the classic `F_SETLK` locks of Postfix,
//! Dovecot and mutt exactly like a classic lock, but it is owned by the open file rather than
//! the process, so two delivery threads of this process also exclude each other (classic fcntl
//! locks would let them interleave).
//!
//! Busy locks are waited for by polling with short, growing sleeps (1 ms … 50 ms) up to a
//! deadline, instead of Postfix's 20 attempts one second apart; timing out defers 4.2.0.

use std::os::fd::{AsFd, BorrowedFd};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Postfix `stale_lock_time`.
pub const STALE_LOCK_TIME: Duration = Duration::from_secs(500);

/// Sleeps between attempts on a busy lock.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(1),
        }
    }

    /// Sleep before the next attempt; `false` when the deadline has passed.
    fn wait(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        sleep(self.next.min(deadline - now));
        self.next = (self.next * 2).min(Duration::from_millis(50));
        true
    }
}

/// A held dotlock; removed on drop (Postfix `mbox_release()`), after the kernel locks, which
/// are released when the mailbox is closed (drop order in the caller).
#[derive(Debug)]
pub struct DotLock<'a> {
    dir: BorrowedFd<'a>,
    name: String,
    /// Device and inode of the lock file we created.
    id: (u64, u64),
}

impl Drop for DotLock<'_> {
    fn drop(&mut self) {
        // Not ours any more (broken as stale by someone else, and maybe re-created): leave it.
        match rustix::fs::statat(self.dir, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if (stat.st_dev, stat.st_ino) == self.id => {
                let _ = rustix::fs::unlinkat(self.dir, self.name.as_str(), AtFlags::empty());
            }
            _ => {}
        }
    }
}

/// Create `<name>.lock` in `dir`, waiting until `deadline` while another holds it. Errors:
/// EEXIST when still locked at the deadline, any other errno at once.
pub fn dotlock<'a>(
    dir: BorrowedFd<'a>,
    mailbox: &str,
    deadline: Instant,
    stale: Duration,
) -> Result<DotLock<'a>, Errno> {
    let name = format!("{mailbox}.lock");
    let mut backoff = Backoff::new();
    loop {
        // O_EXCL|O_CREAT fails on an existing name, symlinks included: nothing is followed.
        match rustix::fs::openat(
            dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let stat = rustix::fs::fstat(&fd);
                drop(fd);
                return match stat {
                    Ok(stat) => Ok(DotLock {
                        dir,
                        name,
                        id: (stat.st_dev, stat.st_ino),
                    }),
                    Err(errno) => {
                        let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
                        Err(errno)
                    }
                };
            }
            Err(Errno::EXIST) => {
                if lock_is_stale(dir, &name, stale) {
                    match break_stale(dir, &name, stale, deadline) {
                        Ok(()) => continue,
                        Err(errno) => return Err(errno),
                    }
                }
                if !backoff.wait(deadline) {
                    return Err(Errno::EXIST);
                }
            }
            Err(errno) => return Err(errno),
        }
    }
}

/// Remove the stale lock `name` (see [`break_dotlock_if`]).
fn break_stale(
    dir: BorrowedFd<'_>,
    name: &str,
    stale: Duration,
    deadline: Instant,
) -> Result<(), Errno> {
    break_dotlock_if(dir, name, deadline, |stat| is_stale(stat, stale)).map(|_| ())
}

/// Remove the dotlock `name` in `dir` if `breakable` says so of the lock file found there,
/// judged while holding an exclusive `flock` on the directory. Every breaker that goes through
/// here (threads and processes of virtmail, by the stale-time rule or any other) is therefore
/// serialized, and none removes a lock created after the one it judged. Without the directory
/// lock (e.g. an unreadable directory) the judgement is made without it, as Postfix does.
/// Returns whether a lock was removed.
pub fn break_dotlock_if(
    dir: BorrowedFd<'_>,
    name: &str,
    deadline: Instant,
    breakable: impl Fn(&Stat) -> bool,
) -> Result<bool, Errno> {
    let guard = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
    .filter(|fd| flock(fd.as_fd(), deadline).is_ok());
    let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return Ok(false);
    };
    if !breakable(&stat) {
        // Someone else broke it (and maybe holds a fresh lock now): wait as usual.
        return Ok(false);
    }
    let result = match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(errno) => Err(errno),
    };
    // Closing the descriptor releases the flock.
    drop(guard);
    result
}

/// Whether the lock's ctime is more than `stale` ago (Postfix `stale_lock_time`), to the
/// nanosecond: a lock created late in a second is not stale a second early.
fn lock_is_stale(dir: BorrowedFd<'_>, name: &str, stale: Duration) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|stat| is_stale(&stat, stale))
}

fn is_stale(stat: &Stat, stale: Duration) -> bool {
    let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    let nanos = u32::try_from(stat.st_ctime_nsec)
        .unwrap_or(0)
        .min(999_999_999);
    let ctime = Duration::new(stat.st_ctime.max(0) as u64, nanos);
    now > ctime + stale
}

/// `flock(LOCK_EX)`, waiting until `deadline`. EWOULDBLOCK at the deadline.
pub fn flock(fd: BorrowedFd<'_>, deadline: Instant) -> Result<(), Errno> {
    let mut backoff = Backoff::new();
    loop {
        match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK | Errno::INTR) => {
                if !backoff.wait(deadline) {
                    return Err(Errno::AGAIN);
                }
            }
            Err(errno) => return Err(errno),
        }
    }
}

/// Whole-file write lock (`F_OFD_SETLK`, `F_WRLCK`, start 0, length 0), waiting until
/// `deadline`. EAGAIN at the deadline (EACCES is mapped to EAGAIN as in Postfix).
pub fn fcntl(fd: BorrowedFd<'_>, deadline: Instant) -> Result<(), Errno> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    };
    let mut backoff = Backoff::new();
    loop {
        match nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)) {
            Ok(_) => return Ok(()),
            Err(
                nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES | nix::errno::Errno::EINTR,
            ) => {
                if !backoff.wait(deadline) {
                    return Err(Errno::AGAIN);
                }
            }
            Err(errno) => return Err(Errno::from_raw_os_error(errno as i32)),
        }
    }
}
