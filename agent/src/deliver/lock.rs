//! mbox locks: dotlock, flock and fcntl, in Postfix's order (spec V19).
//!
//! # Security
//!
//! The dotlock is created with `O_CREAT | O_EXCL` (which never follows a symlink) in the
//! already-opened, contained parent directory, as the recipient, with mode 0 like Postfix.
//! A stale lock (ctime older than the stale time, 500 s) is removed; nothing else is.
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

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
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
}

impl Drop for DotLock<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(self.dir, self.name.as_str(), AtFlags::empty());
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
                drop(fd);
                return Ok(DotLock { dir, name });
            }
            Err(Errno::EXIST) => {
                if lock_is_stale(dir, &name, stale) {
                    match rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => continue,
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

fn lock_is_stale(dir: BorrowedFd<'_>, name: &str, stale: Duration) -> bool {
    let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    let ctime = Duration::new(stat.st_ctime.max(0) as u64, 0);
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
