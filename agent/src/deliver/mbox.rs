//! mbox delivery (virtual(8) V17–V23).
//!
//! # Security
//!
//! Runs under the recipient's file system identity (the caller holds an
//! [`FsIdentity`](crate::fs::identity::FsIdentity)). The parent directory is opened contained below
//! the base and never created (virtual(8) V18); the mailbox is opened relative to that descriptor
//! with symlinks refused, checked to be a regular file with one link, owned by the recipient,
//! and the same inode before and after opening and locking (virtual(8) V17, V19, V20). Writes happen
//! only while every configured lock is held, and any failure truncates the file back to its
//! original length before the locks are released (virtual(8) V22), so a reader never sees half a
//! message. The size limit and quota are checked before the first byte is written.
//!
//! # Crash safety
//!
//! Every append is announced in the mbox's intent journal first and an interrupted one is
//! undone by the next delivery, under the same locks ([`super::journal`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use virtmail_crds::resources::LockMethod;

use super::journal::Journal;
use super::message;
use super::status::{Failure, Place, Stage};
use super::{Options, Target, unsafe_path, untrusted_directory};
use crate::fs::containment::{self, open_beneath};
use crate::fs::layout::{MAIL_FILE_MODE, split_parent};
use crate::fs::{lock, write_all};

fn io(target: &Target, what: impl Into<String>, errno: Errno, stage: Stage) -> Failure {
    Failure::Io {
        place: Place::Mbox(target.full_path.clone()),
        what: what.into(),
        errno,
        stage,
        warning: None,
    }
}

fn refused(target: &Target, reason: impl Into<String>) -> Failure {
    Failure::Refused {
        place: Place::Mbox(target.full_path.clone()),
        reason: reason.into(),
        warning: None,
    }
}

fn unsafe_errno(target: &Target, errno: Errno) -> Option<Failure> {
    containment::unsafe_errno(errno).map(|problem| {
        unsafe_path(
            &target.object,
            &target.key,
            &target.full_path,
            problem,
            Place::Mbox(target.full_path.clone()),
        )
    })
}

/// V20: the mbox exists but belongs to `uid` (defer, naming both uids).
fn not_owned(target: &Target, uid: u32) -> Failure {
    Failure::Refused {
        place: Place::None,
        reason: format!("destination {} is not owned by recipient", target.full_path),
        warning: Some(format!(
            "recipient {}: {} is owned by uid {uid}, not {} (Mailbox/{})",
            target.key, target.full_path, target.uid, target.object
        )),
    }
}

/// The current size of the mbox file, for the RCPT-time quota check. `None` when unknown.
pub fn usage(base: &OwnedFd, target: &Target) -> Option<u64> {
    match open_beneath(base.as_fd(), &target.path, OFlags::PATH, Mode::empty()) {
        Ok(fd) => rustix::fs::fstat(&fd).ok().map(|s| s.st_size as u64),
        Err(Errno::NOENT) => Some(0),
        Err(_) => None,
    }
}

/// Deliver as the current file system identity. Returns the bytes appended.
pub fn deliver(
    base: &OwnedFd,
    target: &Target,
    from_line: &[u8],
    headers: &[u8],
    message: &[u8],
    options: &Options,
) -> Result<u64, Failure> {
    let dotlock_wanted = target.locks.contains(&LockMethod::Dotlock);
    let (parent_path, name) = split_parent(&target.path);

    // The parent directory must exist: virtual(8) does not create it (V18).
    let parent_fd;
    let parent: BorrowedFd<'_> = match parent_path {
        None => base.as_fd(),
        Some(parent_path) => {
            parent_fd =
                containment::open_dirs(base.as_fd(), parent_path, target.uid).map_err(|error| {
                    if error.untrusted.is_some() {
                        let prefix = format!("{}/", target.base);
                        let place = Place::Mbox(target.full_path.clone());
                        return untrusted_directory(target, &prefix, &error, place);
                    }
                    unsafe_errno(target, error.errno).unwrap_or_else(|| {
                        let what = if dotlock_wanted {
                            format!("unable to create lock file {}.lock", target.full_path)
                        } else {
                            "cannot create file exclusively".to_string()
                        };
                        io(target, what, error.errno, Stage::Open)
                    })
                })?;
            parent_fd.as_fd()
        }
    };

    // What is there now (lstat): the dotlock is taken only for a missing or regular file.
    let before: Option<Stat> = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => {
            // Another user's FIFO, socket, device or directory where the mbox belongs (a
            // co-tenant's squatting): defer with their uid named; the type rules below (5.3.5)
            // are for the recipient's own files. Regular files get the owner check after open.
            let file_type = FileType::from_raw_mode(stat.st_mode);
            let special = !matches!(file_type, FileType::RegularFile | FileType::Symlink);
            if special && stat.st_uid != target.uid {
                return Err(not_owned(target, stat.st_uid));
            }
            match file_type {
                FileType::RegularFile => {}
                FileType::Symlink => {
                    return Err(unsafe_path(
                        &target.object,
                        &target.key,
                        &target.full_path,
                        "is a symbolic link",
                        Place::Mbox(target.full_path.clone()),
                    ));
                }
                FileType::Directory => return Err(refused(target, "file is a directory")),
                _ => {
                    return Err(Failure::NotRegular {
                        recipient: target.key.clone(),
                        path: target.full_path.clone(),
                    });
                }
            }
            Some(stat)
        }
        Err(Errno::NOENT) => None,
        Err(errno) => return Err(io(target, "cannot open file", errno, Stage::Open)),
    };

    let deadline = Instant::now() + options.lock_timeout;
    // Crash safety (see above); opened first, it tells whether a dotlock in the way is dead.
    let journal = Journal::open(parent, name, target);
    let mut backoff = lock::Backoff::new();
    // Take every lock; a busy kernel lock while the dotlock is held releases everything and
    // starts again after a sleep (see `lock`: writers with the opposite order must not deadlock).
    let locked = loop {
        let (dotlock, claim) = if dotlock_wanted {
            if let Some(journal) = &journal {
                journal.break_orphaned_dotlock(parent, name, target, &options.hostname, deadline);
            }
            let dotlock =
                lock::dotlock(parent, name, target.uid, deadline, options.stale_lock_time)
                    .map_err(|error| dotlock_failure(target, error))?;
            let claim = journal
                .as_ref()
                .and_then(|journal| journal.claim_dotlock(dotlock.created(), &options.hostname));
            (Some(dotlock), claim)
        } else {
            (None, None)
        };
        let file = open_checked(parent, name, target, before.as_ref())?;
        // With the dotlock held, one attempt only.
        let kernel_deadline = if dotlock.is_some() {
            Instant::now()
        } else {
            deadline
        };
        match kernel_locks(&file, &target.locks, kernel_deadline) {
            Ok(()) => break (claim, dotlock, file),
            Err(Errno::AGAIN) if dotlock.is_some() => {
                drop(file);
                drop(dotlock);
                drop(claim);
                if !backoff.wait(deadline) {
                    return Err(io(
                        target,
                        "unable to lock for exclusive access",
                        Errno::AGAIN,
                        Stage::Open,
                    ));
                }
            }
            Err(errno) => {
                return Err(io(
                    target,
                    "unable to lock for exclusive access",
                    errno,
                    Stage::Open,
                ));
            }
        }
    };
    // Dropped in reverse: the file (kernel locks), the dotlock, then its claim (see the journal:
    // a crash at any moment while the lock exists leaves it breakable).
    let _claim = locked.0;
    let _dotlock = locked.1;
    let file = locked.2;
    if let Some(journal) = &journal {
        journal.recover(parent, name, &file, target);
    }
    let stat = rustix::fs::fstat(&file)
        .map_err(|errno| io(target, "cannot open file", errno, Stage::Open))?;
    if stat.st_nlink != 1 {
        return Err(refused(target, "target file status changed unexpectedly"));
    }

    let mut data = Vec::with_capacity(from_line.len() + headers.len() + message.len() + 64);
    data.extend_from_slice(from_line);
    data.extend_from_slice(headers);
    message::push_mbox_quoted(&mut data, message);
    data.push(b'\n');

    let original_length = stat.st_size as u64;
    let new_length = original_length + data.len() as u64;
    // V29 without RLIMIT_FSIZE (process-wide): refused before writing, so no partial data.
    if target.size_limit > 0 && new_length > target.size_limit {
        return Err(Failure::TooLarge {
            place: Place::Mbox(target.full_path.clone()),
        });
    }
    if target.quota.is_some_and(|quota| new_length > quota) {
        return Err(Failure::OverQuota {
            place: Place::Mbox(target.full_path.clone()),
        });
    }

    if let Some(journal) = &journal {
        journal
            .announce(&stat, original_length, &data)
            .map_err(|errno| io(target, "error writing message", errno, Stage::Write))?;
    }
    if let Err(errno) = write_all(&file, &data).and_then(|()| rustix::fs::fsync(&file)) {
        // V22: truncate back while the locks are still held.
        let _ = rustix::fs::ftruncate(&file, original_length);
        let _ = rustix::fs::fsync(&file);
        if let Some(journal) = &journal {
            journal.clear();
        }
        return Err(io(target, "error writing message", errno, Stage::Write));
    }
    if let Some(journal) = &journal {
        journal.clear();
    }
    drop(file);
    Ok(data.len() as u64)
}

/// The failure for a dotlock that could not be taken.
fn dotlock_failure(target: &Target, error: lock::DotlockError) -> Failure {
    match error {
        lock::DotlockError::Errno(errno) => io(
            target,
            format!("unable to create lock file {}.lock", target.full_path),
            errno,
            Stage::Open,
        ),
        lock::DotlockError::Foreign { uid } => Failure::Refused {
            place: Place::Mbox(target.full_path.clone()),
            reason: format!(
                "lock file {}.lock is held by another user",
                target.full_path
            ),
            warning: Some(format!(
                "recipient {}: {}.lock is owned by uid {uid}, not {} (Mailbox/{}): \
                 a lock of another user in the mailbox directory; not waited on, not removed",
                target.key, target.full_path, target.uid, target.object
            )),
        },
    }
}

/// Open the mbox and check it is the regular, singly linked file of the recipient that was
/// there before (`before`, if anything was).
fn open_checked(
    parent: BorrowedFd<'_>,
    name: &str,
    target: &Target,
    before: Option<&Stat>,
) -> Result<OwnedFd, Failure> {
    let file = open_mailbox(parent, name, target)?;
    let stat = rustix::fs::fstat(&file)
        .map_err(|errno| io(target, "cannot open file", errno, Stage::Open))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(Failure::NotRegular {
            recipient: target.key.clone(),
            path: target.full_path.clone(),
        });
    }
    if let Some(before) = before
        && (before.st_dev != stat.st_dev || before.st_ino != stat.st_ino)
    {
        return Err(refused(target, "file status changed unexpectedly"));
    }
    if stat.st_nlink != 1 {
        return Err(refused(
            target,
            format!("file has {} hard links", stat.st_nlink),
        ));
    }
    if stat.st_uid != target.uid {
        return Err(not_owned(target, stat.st_uid));
    }
    Ok(file)
}

/// The configured kernel locks (flock, fcntl) on `file`, waiting until `deadline`.
fn kernel_locks(file: &OwnedFd, methods: &[LockMethod], deadline: Instant) -> Result<(), Errno> {
    for method in methods {
        match method {
            LockMethod::Flock => lock::flock(file.as_fd(), deadline)?,
            LockMethod::Fcntl => lock::fcntl(file.as_fd(), deadline)?,
            LockMethod::Dotlock => {}
        }
    }
    Ok(())
}

/// safe_open(): open an existing file, else create it exclusively (0600), else reopen.
fn open_mailbox(parent: BorrowedFd<'_>, name: &str, target: &Target) -> Result<OwnedFd, Failure> {
    let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::NONBLOCK | OFlags::NOCTTY;
    let classify_open = |errno: Errno, what: &str| -> Failure {
        match errno {
            Errno::LOOP => unsafe_path(
                &target.object,
                &target.key,
                &target.full_path,
                "is a symbolic link",
                Place::Mbox(target.full_path.clone()),
            ),
            Errno::ISDIR => refused(target, "file is a directory"),
            errno => {
                unsafe_errno(target, errno).unwrap_or_else(|| io(target, what, errno, Stage::Open))
            }
        }
    };
    for _ in 0..2 {
        match open_beneath(parent, name, flags, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(errno) => return Err(classify_open(errno, "cannot open file")),
        }
        match open_beneath(
            parent,
            name,
            flags | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(MAIL_FILE_MODE),
        ) {
            Ok(fd) => return Ok(fd),
            Err(Errno::EXIST) => continue,
            Err(errno) => return Err(classify_open(errno, "cannot create file exclusively")),
        }
    }
    Err(io(target, "cannot open file", Errno::EXIST, Stage::Open))
}
