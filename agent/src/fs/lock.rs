//! mbox locks: dotlock, flock and fcntl, in Postfix's order (virtual(8) V19).
//!
//! # Security
//!
//! The dotlock is created with `O_CREAT | O_EXCL` (which never follows a symlink) in the
//! already-opened, contained parent directory, as the recipient, with mode 0 like Postfix.
//! A stale lock (ctime older than the stale time, 500 s) is removed; nothing else is. Before any
//! removal the file must look like a lock ([`lock_shaped`]): a regular file with one link, at
//! most [`MAX_LOCK_SIZE`] bytes of printable text (a pid, a host name), not starting like an mbox,
//! owned by the recipient or root. Anything else at the lock name (a mailbox of the same uid, a
//! co-tenant's file) is never removed, whatever its age.
//!
//! A lock owned by another non-root uid can only be a co-tenant's squatting in a shared (1777)
//! directory: [`dotlock`] reports it at once ([`DotlockError::Foreign`]) instead of waiting on it.
//!
//! Breaking a stale lock is "stat, then unlink by name", which races: a delivery that judged the
//! old lock stale could unlink a fresh lock another delivery created after the old one was gone,
//! and both would then append at once (Postfix's `dot_lockfile()` has the same window). Our
//! deliveries therefore break a lock only while holding an exclusive `flock` on the parent
//! directory and after checking again under it, so among this agent's threads and every other
//! virtmail process on the volume only one breaks a given stale lock and nobody removes a
//! fresh one. Releasing removes the lock only if it is still the file we created.
//!
//! Any user who can read the directory can also hold its `flock`, so waiting for it must not
//! hold anything else up: no process-wide lock is held while waiting, and a wait that times out
//! gives up (EAGAIN) instead of judging and removing without the directory lock. Only where the
//! directory cannot be opened for `flock` at all (it is not readable) do breakers of this process
//! serialize on an in-process mutex, held just for the judgement and the `unlink`.
//!
//! Kernel locks differ from Postfix in one deliberate way: the fcntl lock is an *open file
//! description* lock (`F_OFD_SETLK`). It conflicts with the classic `F_SETLK` locks of Postfix,
//! Dovecot and mutt exactly like a classic lock, but it is owned by the open file rather than
//! the process, so two delivery threads of this process also exclude each other (classic fcntl
//! locks would let them interleave).
//!
//! Busy locks are waited for by polling with short, growing sleeps (1 ms … 50 ms) up to a
//! deadline, instead of Postfix's 20 attempts one second apart; timing out defers 4.2.0.
//!
//! A kernel lock is never waited for while the dotlock is held: the caller tries it once and, if
//! it is busy, releases the dotlock, sleeps and starts again. Writers that lock in the opposite
//! order (Debian's Dovecot: `mbox_write_locks = fcntl dotlock`) hold the kernel lock while they
//! wait for the dotlock; waiting for theirs while holding ours would deadlock both until a
//! timeout.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Postfix `stale_lock_time`.
pub const STALE_LOCK_TIME: Duration = Duration::from_secs(500);

/// The largest file taken for a lock: Postfix's are empty, liblockfile and Dovecot write a pid
/// and perhaps a host name.
pub const MAX_LOCK_SIZE: u64 = 128;

/// Why [`dotlock`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotlockError {
    /// A system call failed (EEXIST: still locked at the deadline; EAGAIN: the directory lock
    /// that serializes breakers was not free in time).
    Errno(Errno),
    /// The lock file belongs to another (non-root) uid: a co-tenant's file, never waited on or
    /// removed.
    Foreign {
        /// Its owner.
        uid: u32,
    },
}

impl From<Errno> for DotlockError {
    fn from(errno: Errno) -> DotlockError {
        DotlockError::Errno(errno)
    }
}

/// Breakers of this process where the directory cannot be `flock`ed; held only for the
/// judgement and the `unlink`, never while waiting.
static UNLOCKABLE_DIRECTORY_BREAKERS: Mutex<()> = Mutex::new(());

/// Sleeps between attempts on a busy lock.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(1),
        }
    }

    /// Sleep before the next attempt; `false` when the deadline has passed.
    pub(crate) fn wait(&mut self, deadline: Instant) -> bool {
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
    /// Status of the lock file we created, right after creating it.
    created: Stat,
}

impl DotLock<'_> {
    /// Status of the lock file as created (its inode and ctime identify it).
    pub fn created(&self) -> &Stat {
        &self.created
    }
}

impl Drop for DotLock<'_> {
    fn drop(&mut self) {
        // Not ours any more (broken as stale by someone else, and maybe re-created): leave it.
        match rustix::fs::statat(self.dir, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat)
                if (stat.st_dev, stat.st_ino) == (self.created.st_dev, self.created.st_ino) =>
            {
                let _ = rustix::fs::unlinkat(self.dir, self.name.as_str(), AtFlags::empty());
            }
            _ => {}
        }
    }
}

/// Create `<name>.lock` in `dir` as `owner` (the current fsuid), waiting until `deadline` while
/// another holds it. Errors: EEXIST when still locked at the deadline, [`DotlockError::Foreign`]
/// at once for a lock of another non-root uid, any other errno at once.
pub fn dotlock<'a>(
    dir: BorrowedFd<'a>,
    mailbox: &str,
    owner: u32,
    deadline: Instant,
    stale: Duration,
) -> Result<DotLock<'a>, DotlockError> {
    let name = virtmail_crds::contract::dotlock_name(mailbox);
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
                    Ok(created) => Ok(DotLock { dir, name, created }),
                    Err(errno) => {
                        let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
                        Err(errno.into())
                    }
                };
            }
            Err(Errno::EXIST) => {
                match rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) if stat.st_uid != owner && stat.st_uid != 0 => {
                        return Err(DotlockError::Foreign { uid: stat.st_uid });
                    }
                    Ok(stat) if is_stale(&stat, stale) => {
                        let stale_rule = |stat: &Stat| is_stale(stat, stale);
                        if break_dotlock_if(dir, &name, owner, deadline, stale_rule)? {
                            continue;
                        }
                        // Not removed (not lock-shaped): it stays in the way until the deadline.
                    }
                    _ => {}
                }
                if !backoff.wait(deadline) {
                    return Err(Errno::EXIST.into());
                }
            }
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Whether the file `name` (status `stat`) in `dir` looks like a lock file and may therefore be
/// removed by a breaker: a regular file with one link, owned by `owner` or root, at most
/// [`MAX_LOCK_SIZE`] bytes, and (when not empty) printable text that does not start like an mbox.
/// A non-empty file the current identity cannot read is not judged a lock.
pub fn lock_shaped(dir: BorrowedFd<'_>, name: &str, owner: u32, stat: &Stat) -> bool {
    let plain = rustix::fs::FileType::from_raw_mode(stat.st_mode)
        == rustix::fs::FileType::RegularFile
        && stat.st_nlink == 1
        && (stat.st_uid == owner || stat.st_uid == 0)
        && (stat.st_size as u64) <= MAX_LOCK_SIZE;
    if !plain {
        return false;
    }
    if stat.st_size == 0 {
        return true;
    }
    let Ok(fd) = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let same =
        rustix::fs::fstat(&fd).is_ok_and(|s| (s.st_dev, s.st_ino) == (stat.st_dev, stat.st_ino));
    let mut content = [0u8; MAX_LOCK_SIZE as usize + 1];
    let Ok(n) = rustix::io::read(&fd, &mut content) else {
        return false;
    };
    let content = &content[..n];
    same && n as u64 <= MAX_LOCK_SIZE
        && !content.starts_with(b"From ")
        && content
            .iter()
            .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0))
}

/// Remove the dotlock `name` in `dir` if it is [`lock_shaped`] for `owner` and `breakable` says
/// so of it, judged while holding an exclusive `flock` on the directory. Every breaker that goes
/// through here (threads and processes of virtmail, by the stale-time rule or any other) is
/// therefore serialized, and none removes a lock created after the one it judged. EAGAIN when
/// the directory lock is not free by `deadline` (nothing is judged without it). Only a directory
/// that cannot be opened for `flock` is judged without it, under an in-process mutex, as
/// Postfix does. Returns whether a lock was removed.
pub fn break_dotlock_if(
    dir: BorrowedFd<'_>,
    name: &str,
    owner: u32,
    deadline: Instant,
    breakable: impl Fn(&Stat) -> bool,
) -> Result<bool, Errno> {
    let directory = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let (_flock, _in_process) = match directory {
        Ok(fd) => {
            // The caller's deadline bounds the wait; on timeout: EAGAIN, nothing removed.
            flock(fd.as_fd(), deadline)?;
            (Some(fd), None)
        }
        Err(_) => (
            None,
            Some(
                UNLOCKABLE_DIRECTORY_BREAKERS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            ),
        ),
    };
    let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return Ok(false);
    };
    if !lock_shaped(dir, name, owner, &stat) || !breakable(&stat) {
        // Someone else broke it (and maybe holds a fresh lock now): wait as usual.
        return Ok(false);
    }
    // Dropping `_flock` (closing the descriptor) releases the directory lock afterwards.
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(errno) => Err(errno),
    }
}

/// Whether the lock's ctime is more than `stale` ago (Postfix `stale_lock_time`), to the
/// nanosecond: a lock created late in a second is not stale a second early.
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
