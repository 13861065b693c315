//! Maildir delivery (virtual(8) V24–V28) with the durability docs/DELIVERY.md describes, Dovecot names and Maildir++
//! quota.
//!
//! Sequence: make the maildir and `tmp/ new/ cur/` when missing (0700, as the recipient, spec
//! V24/V27 and docs/DELIVERY.md); check the maildir's owner; create `tmp/<unique>` with `O_EXCL`
//! 0600; write; fsync; `renameat2(RENAME_NOREPLACE)` into `new/<unique>,S=<size>,W=<vsize>`
//! (never clobbers; falls back to link+unlink where the file system lacks it); fsync `new/`;
//! append to `maildirsize`. Any failure removes what this delivery created in `tmp/` or `new/`.
//!
//! # Crash safety
//!
//! A delivery killed before its rename leaves its file in `tmp/` (a crash after the rename
//! leaves a complete message in `new/`, which is kept: its reply may have been sent). Such a file
//! was never acknowledged, so it is removed at the next delivery to that maildir, but only when
//! it is provably ours and provably dead: the name has our exact shape
//! (`<sec>.M<usec>P<pid>Q<n>.<our host>`, or our `maildirsize` temporary), the time in the name
//! is before this process's first Maildir delivery (so no delivery of ours can still be writing
//! it), and the pid in the name is ours (an earlier incarnation in a container, where the agent
//! is always pid 1) or no longer exists. Other programs' files in `tmp/` are left alone until
//! they are 36 hours old (qmail's rule).
//!
//! # Security
//!
//! Runs under the recipient's file system identity. Every directory is resolved one contained
//! component at a time from the base descriptor (symlinks refused), files are created by name
//! relative to an opened directory with `O_EXCL | O_NOFOLLOW`, and the maildir directory, `tmp/`
//! and `new/` must be owned by the recipient's uid (docs/DELIVERY.md; virtual(8) does not check,
//! virtual(8) V28).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::message;
use super::status::{Failure, Place, Stage};
use super::{Options, Target, unsafe_path, untrusted_directory};
use crate::fs::containment::{self, WalkError, open_beneath};
use crate::fs::layout::{MAIL_FILE_MODE, MAILDIR_MODE, MAILDIR_SUBDIRECTORIES};
use crate::fs::write_all;

/// Dovecot and Courier recalculate a `maildirsize` larger than this.
const MAILDIRSIZE_LIMIT: usize = 5120;

/// Distinguishes deliveries within one process and microsecond (`Q<n>`).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn io(what: impl Into<String>, errno: Errno, stage: Stage, target: &Target) -> Failure {
    let warning = (errno == Errno::ACCESS).then(|| {
        format!(
            "maildir access problem for UID/GID={}/{}: {} (Mailbox/{})",
            target.uid, target.gid, target.full_path, target.object
        )
    });
    Failure::Io {
        place: Place::Maildir,
        what: what.into(),
        errno,
        stage,
        warning,
    }
}

fn walk_failure(target: &Target, prefix: &str, error: WalkError) -> Failure {
    if error.untrusted.is_some() {
        return untrusted_directory(target, prefix, &error, Place::Maildir);
    }
    match containment::unsafe_errno(error.errno) {
        Some(problem) => unsafe_path(
            &target.object,
            &target.key,
            &format!("{prefix}{}", error.at),
            problem,
            Place::Maildir,
        ),
        None => io(
            format!("create maildir directory {prefix}{}", error.at),
            error.errno,
            Stage::Open,
            target,
        ),
    }
}

fn check_owner(fd: &OwnedFd, what: &str, target: &Target) -> Result<(), Failure> {
    let stat = rustix::fs::fstat(fd).map_err(|errno| io(what, errno, Stage::Open, target))?;
    if stat.st_uid != target.uid {
        return Err(Failure::Refused {
            place: Place::Maildir,
            reason: format!("{what} is not owned by recipient"),
            warning: Some(format!(
                "recipient {}: {what} is owned by uid {}, not {} (Mailbox/{})",
                target.key, stat.st_uid, target.uid, target.object
            )),
        });
    }
    Ok(())
}

/// The opened maildir and its subdirectories.
#[derive(Debug)]
struct Maildir {
    root: OwnedFd,
    tmp: OwnedFd,
    new: OwnedFd,
}

fn open_maildir(base: &OwnedFd, target: &Target, create: bool) -> Result<Maildir, Failure> {
    let relative = target.path.trim_end_matches('/');
    let base_prefix = format!("{}/", target.base);
    let root = if create {
        containment::make_dirs(
            base.as_fd(),
            relative,
            Mode::from_raw_mode(MAILDIR_MODE),
            target.uid,
        )
        .map(|(fd, _)| fd)
    } else {
        containment::open_dirs(base.as_fd(), relative, target.uid)
    }
    .map_err(|e| walk_failure(target, &base_prefix, e))?;
    check_owner(&root, &target.full_path, target)?;
    let mut subdirs = Vec::with_capacity(3);
    // docs/DELIVERY.md: all three always exist after a delivery (virtual(8) may skip cur/, V27).
    for sub in MAILDIR_SUBDIRECTORIES {
        // The root is the recipient's (checked above): `tmp/` and `new/` get the stricter
        // owner check below, `cur/` is never written here.
        let fd = if create {
            containment::make_dirs_in_own_dir(root.as_fd(), sub, Mode::from_raw_mode(MAILDIR_MODE))
                .map(|(fd, _)| fd)
        } else {
            containment::open_dir(root.as_fd(), sub).map_err(|errno| WalkError {
                errno,
                at: sub.to_string(),
                untrusted: None,
            })
        }
        .map_err(|e| walk_failure(target, &target.full_path, e))?;
        subdirs.push(fd);
    }
    let _cur = subdirs.pop();
    let new = subdirs.pop().expect("three subdirectories");
    let tmp = subdirs.pop().expect("three subdirectories");
    check_owner(&tmp, &format!("{}tmp/", target.full_path), target)?;
    check_owner(&new, &format!("{}new/", target.full_path), target)?;
    Ok(Maildir { root, tmp, new })
}

/// Host name for file names: `/` and `:` escaped as maildir.html says, `,` too (Dovecot splits
/// the name at commas).
fn escaped_host(host: &str) -> String {
    host.replace('/', "\\057")
        .replace(':', "\\072")
        .replace(',', "\\054")
}

/// When this process first named a Maildir file: every name it makes is at or after this, every
/// name made by an earlier process before it. Truncated to whole microseconds like the time in
/// a name, or the first name (made in the same microsecond) would look older than the process.
static STARTED: LazyLock<Duration> = LazyLock::new(|| {
    let now = now();
    Duration::new(now.as_secs(), now.subsec_micros() * 1000)
});

fn now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// A unique base name, Dovecot style: `<sec>.M<usec>P<pid>Q<n>.<host>`.
fn unique_name(host: &str) -> String {
    LazyLock::force(&STARTED);
    let now = now();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        rustix::process::getpid().as_raw_nonzero(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        escaped_host(host)
    )
}

/// Deliver as the current file system identity. Returns the new file's path and size.
pub fn deliver(
    base: &OwnedFd,
    target: &Target,
    headers: &[u8],
    message: &[u8],
    options: &Options,
) -> Result<(String, u64), Failure> {
    let maildir = open_maildir(base, target, true)?;

    let mut data = Vec::with_capacity(headers.len() + message.len() + 1);
    data.extend_from_slice(headers);
    data.extend_from_slice(message);
    message::push_final_newline(&mut data, message);
    let size = data.len() as u64;

    // V29: each Maildir file is capped; checked before anything is created.
    if target.size_limit > 0 && size > target.size_limit {
        return Err(Failure::TooLarge {
            place: Place::Maildir,
        });
    }
    if let Some(quota) = target.quota {
        let used = usage_of(&maildir.root, quota).unwrap_or(0);
        if used + size > quota {
            return Err(Failure::OverQuota {
                place: Place::Maildir,
            });
        }
    }

    // tmp/<unique>, O_EXCL: a name collision picks another name.
    let mut attempts = 0;
    let (tmp_name, file) = loop {
        let name = unique_name(&options.hostname);
        match rustix::fs::openat(
            &maildir.tmp,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(MAIL_FILE_MODE),
        ) {
            Ok(fd) => break (name, fd),
            Err(Errno::EXIST) if attempts < 8 => attempts += 1,
            Err(errno) => {
                return Err(io(
                    format!("create maildir file {}tmp/{name}", target.full_path),
                    errno,
                    Stage::Open,
                    target,
                ));
            }
        }
    };
    let remove_tmp = || {
        let _ = rustix::fs::unlinkat(&maildir.tmp, tmp_name.as_str(), AtFlags::empty());
    };
    if let Err(errno) = write_all(&file, &data).and_then(|()| rustix::fs::fsync(&file)) {
        drop(file);
        remove_tmp();
        return Err(io("error writing message", errno, Stage::Write, target));
    }
    drop(file);

    let vsize = message::virtual_size(&data);
    let mut final_name = format!("{tmp_name},S={size},W={vsize}");
    let mut attempts = 0;
    loop {
        let renamed = rustix::fs::renameat_with(
            &maildir.tmp,
            tmp_name.as_str(),
            &maildir.new,
            final_name.as_str(),
            RenameFlags::NOREPLACE,
        );
        let result = match renamed {
            // File systems without RENAME_NOREPLACE: link (never clobbers) then unlink.
            Err(Errno::INVAL | Errno::NOSYS) => rustix::fs::linkat(
                &maildir.tmp,
                tmp_name.as_str(),
                &maildir.new,
                final_name.as_str(),
                AtFlags::empty(),
            )
            .map(|()| remove_tmp()),
            other => other,
        };
        match result {
            Ok(()) => break,
            Err(Errno::EXIST) if attempts < 8 => {
                attempts += 1;
                final_name = format!("{},S={size},W={vsize}", unique_name(&options.hostname));
            }
            Err(errno) => {
                remove_tmp();
                return Err(io(
                    format!("create maildir file {}new/{final_name}", target.full_path),
                    errno,
                    Stage::Open,
                    target,
                ));
            }
        }
    }
    // docs/DELIVERY.md: the directory entry is durable before we report success.
    if let Err(errno) = rustix::fs::fsync(&maildir.new) {
        let _ = rustix::fs::unlinkat(&maildir.new, final_name.as_str(), AtFlags::empty());
        return Err(io("error writing message", errno, Stage::Write, target));
    }
    if target.quota.is_some() {
        record_in_maildirsize(&maildir.root, size);
        if let Some(key) = maildir_id(&maildir.root) {
            USAGE_CACHE.add(key, size);
        }
    }
    clean_stale_tmp(&maildir.tmp, &options.hostname);
    Ok((format!("{}new/{final_name}", target.full_path), size))
}

/// Files in `tmp/` untouched for this long are debris of crashed deliveries (qmail's rule).
const STALE_TMP: Duration = Duration::from_secs(36 * 3600);

/// If `name` is a `tmp/` name this program makes for `host`: the time and pid in it.
fn our_tmp_name(name: &str, host: &str) -> Option<(Duration, u32)> {
    let (sec, rest) = name.split_once('.')?;
    let (unique, rest_host) = rest.split_once('.')?;
    let ours = rest_host == escaped_host(host) || rest_host == "quota.maildirsize";
    if !ours {
        return None;
    }
    let unique = unique.strip_prefix('M')?;
    let (usec, rest) = unique.split_once('P')?;
    let (pid, sequence) = rest.split_once('Q')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(sec) && digits(usec) && digits(pid) && digits(sequence)) {
        return None;
    }
    let usec: u32 = usec.parse().ok().filter(|u| *u < 1_000_000)?;
    Some((
        Duration::new(sec.parse().ok()?, usec * 1000),
        pid.parse().ok()?,
    ))
}

/// Whether `tmp/<name>` was left by a delivery of ours that died (see "Crash safety").
fn left_by_dead_delivery(name: &str, host: &str) -> bool {
    let Some((named_at, pid)) = our_tmp_name(name, host) else {
        return false;
    };
    if named_at >= *STARTED {
        return false;
    }
    let own = rustix::process::getpid().as_raw_nonzero().get() as u32;
    pid == own
        || rustix::process::Pid::from_raw(pid as i32)
            .is_some_and(|p| rustix::process::test_kill_process(p) == Err(Errno::SRCH))
}

/// Remove stale files from `tmp/` (docs/DELIVERY.md; virtual(8) never does, virtual(8) V27): files of dead
/// deliveries of ours at once, anything else after 36 hours. Best effort, as the recipient,
/// regular files only, by name relative to the opened `tmp/`.
fn clean_stale_tmp(tmp: &OwnedFd, host: &str) {
    let Ok(entries) = Dir::read_from(tmp) else {
        return;
    };
    let Some(limit) = SystemTime::now()
        .checked_sub(STALE_TMP)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
    else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_bytes().starts_with(b".") {
            continue;
        }
        let Ok(stat) = rustix::fs::statat(tmp, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let stale = stat.st_mtime.max(0) as u64 <= limit.as_secs()
            || left_by_dead_delivery(&name.to_string_lossy(), host);
        if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
            && stale
            && rustix::fs::unlinkat(tmp, name, AtFlags::empty()).is_ok()
        {
            tracing::info!(
                "removed tmp/{} (left by a delivery that died or 36 hours old; never acknowledged)",
                name.to_string_lossy()
            );
        }
    }
}

/// Maildir++ usage in bytes for the RCPT-time check; `None` when the maildir cannot be read.
pub fn usage(base: &OwnedFd, target: &Target, quota: u64) -> Option<u64> {
    let maildir = match containment::open_dir(base.as_fd(), target.path.trim_end_matches('/')) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Some(0),
        Err(_) => return None,
    };
    usage_of(&maildir, quota)
}

/// Usage from `maildirsize`, recalculated (and rewritten) when it is missing or unusable, as
/// Dovecot's and Courier's quota code do.
///
/// # Security
///
/// The mailbox owner controls `maildirsize` and the number of files: a `maildirsize` that is a
/// directory cannot be rewritten, so every check would rescan the whole Maildir. A scan is
/// therefore bounded ([`SCAN_LIMIT`] entries, [`SCAN_TIME`]; past either the usage is unknown and
/// the quota is not enforced for that delivery, as when the Maildir cannot be read), and its
/// result is kept per Maildir for [`USAGE_CACHE_TIME`], so one owner costs at most one scan per
/// that time however many recipients and deliveries arrive. Callers run on blocking threads.
fn usage_of(root: &OwnedFd, quota: u64) -> Option<u64> {
    if let Some(bytes) = read_maildirsize(root) {
        return Some(bytes);
    }
    let key = maildir_id(root)?;
    if let Some(bytes) = USAGE_CACHE.get(key) {
        return bytes;
    }
    let scanned = recalculate(root);
    USAGE_CACHE.put(key, scanned.map(|(bytes, _)| bytes));
    let (bytes, count) = scanned?;
    write_maildirsize(root, quota, bytes, count);
    Some(bytes)
}

/// Largest number of directory entries one usage scan reads.
const SCAN_LIMIT: u64 = 1_000_000;
/// Longest time one usage scan runs.
const SCAN_TIME: Duration = Duration::from_secs(2);
/// How long a scanned usage is reused while `maildirsize` stays unusable.
const USAGE_CACHE_TIME: Duration = Duration::from_secs(60);
/// Maildirs remembered at most (the cache is emptied when full).
const USAGE_CACHE_ENTRIES: usize = 10_000;

/// A Maildir's device, inode and birth time: an inode number is reused as soon as its directory
/// is removed, and a new Maildir must not inherit the usage scanned in a removed one.
type MaildirId = (u64, u64, i64, u32);

/// The [`MaildirId`] of an open Maildir root. Where the file system keeps no birth time, the
/// inode alone.
fn maildir_id(root: &OwnedFd) -> Option<MaildirId> {
    let stat = rustix::fs::statx(
        root,
        "",
        AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::INO | rustix::fs::StatxFlags::BTIME,
    )
    .ok()?;
    let device = (u64::from(stat.stx_dev_major) << 32) | u64::from(stat.stx_dev_minor);
    let born = if stat.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0 {
        (stat.stx_btime.tv_sec, stat.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    Some((device, stat.stx_ino, born.0, born.1))
}
/// A scanned usage (`None`: the scan hit its bound) and when it was scanned.
type CachedUsage = (Option<u64>, std::time::Instant);

/// Usage found by scanning, per Maildir (device, inode), for maildirs whose `maildirsize` could
/// not be used. `None` usage: the scan hit its bound.
#[derive(Debug, Default)]
struct UsageCache {
    entries: std::sync::Mutex<std::collections::HashMap<MaildirId, CachedUsage>>,
}

static USAGE_CACHE: LazyLock<UsageCache> = LazyLock::new(UsageCache::default);

impl UsageCache {
    /// A fresh entry: `Some(usage)` (usage itself may be unknown).
    fn get(&self, key: MaildirId) -> Option<Option<u64>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&key)
            .filter(|(_, at)| at.elapsed() < USAGE_CACHE_TIME)
            .map(|(bytes, _)| *bytes)
    }

    fn put(&self, key: MaildirId, bytes: Option<u64>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= USAGE_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (bytes, std::time::Instant::now()));
    }

    /// A delivery added `size` bytes to a Maildir whose usage is cached.
    fn add(&self, key: MaildirId, size: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((Some(bytes), _)) = entries.get_mut(&key) {
            *bytes = bytes.saturating_add(size);
        }
    }
}

/// Sum the data lines of `maildirsize`. `None` if missing, too large, with NUL, unparsable or
/// negative (the cases in which Dovecot rebuilds it).
fn read_maildirsize(root: &OwnedFd) -> Option<u64> {
    let fd = open_beneath(
        root.as_fd(),
        "maildirsize",
        OFlags::RDONLY | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .ok()?;
    let mut buffer = vec![0u8; MAILDIRSIZE_LIMIT + 1];
    let mut filled = 0;
    while filled < buffer.len() {
        match rustix::io::read(&fd, &mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    if filled > MAILDIRSIZE_LIMIT || buffer[..filled].contains(&0) {
        return None;
    }
    let text = std::str::from_utf8(&buffer[..filled]).ok()?;
    let mut lines = text.lines();
    lines.next()?;
    let mut bytes: i64 = 0;
    let mut count: i64 = 0;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        bytes = bytes.checked_add(fields.next()?.parse::<i64>().ok()?)?;
        count = count.checked_add(fields.next()?.parse::<i64>().ok()?)?;
    }
    if bytes < 0 || count < 0 {
        return None;
    }
    Some(bytes as u64)
}

/// Sum the sizes of the messages in `new/` and `cur/` of the root and of every Maildir++
/// folder (`.Name/`), Trash included (as Dovecot counts).
fn recalculate(root: &OwnedFd) -> Option<(u64, u64)> {
    let mut bytes: u64 = 0;
    let mut count = 0;
    let started = std::time::Instant::now();
    let mut entries_read: u64 = 0;
    let mut over_bound = || {
        entries_read += 1;
        entries_read > SCAN_LIMIT
            || (entries_read.is_multiple_of(1024) && started.elapsed() > SCAN_TIME)
    };
    let mut folders = vec![String::new()];
    for entry in Dir::read_from(root).ok()?.flatten() {
        if over_bound() {
            return None;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            && name != "."
            && name != ".."
            && entry.file_type() == FileType::Directory
        {
            folders.push(format!("{name}/"));
        }
    }
    for folder in folders {
        for sub in ["new", "cur"] {
            let Ok(dir) = containment::open_dir(root.as_fd(), &format!("{folder}{sub}")) else {
                continue;
            };
            let Ok(entries) = Dir::read_from(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if over_bound() {
                    return None;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let size = size_from_name(&name).or_else(|| {
                    rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .ok()
                        .map(|s| s.st_size as u64)
                });
                if let Some(size) = size {
                    bytes = bytes.saturating_add(size);
                    count += 1;
                }
            }
        }
    }
    Some((bytes, count))
}

/// The `,S=<n>` field of a Maildir file name.
fn size_from_name(name: &str) -> Option<u64> {
    let base = name.split(':').next()?;
    base.split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix("S="))
        .and_then(|n| n.parse().ok())
}

/// Write a fresh `maildirsize` (tmp file + rename, as Courier does). Best effort: it is a cache.
/// The temporary file lives in `tmp/`, reached through a contained descriptor.
fn write_maildirsize(root: &OwnedFd, quota: u64, bytes: u64, count: u64) {
    let content = format!("{quota}S\n{bytes} {count}\n");
    let Ok(tmp) = containment::open_dir(root.as_fd(), "tmp") else {
        return;
    };
    let name = format!("{}.maildirsize", unique_name("quota"));
    let Ok(fd) = rustix::fs::openat(
        &tmp,
        name.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(MAIL_FILE_MODE),
    ) else {
        return;
    };
    let written = write_all(&fd, content.as_bytes()).is_ok();
    drop(fd);
    if !written || rustix::fs::renameat(&tmp, name.as_str(), root, "maildirsize").is_err() {
        let _ = rustix::fs::unlinkat(&tmp, name.as_str(), AtFlags::empty());
    }
}

/// Append `<size> 1` to an existing `maildirsize` (O_APPEND, one write, as Dovecot does).
fn record_in_maildirsize(root: &OwnedFd, size: u64) {
    if let Ok(fd) = open_beneath(
        root.as_fd(),
        "maildirsize",
        OFlags::WRONLY | OFlags::APPEND | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        let _ = write_all(&fd, format!("{size} 1\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_unique_name_shape() {
        let name = unique_name("mx/a:b,c");
        let parts: Vec<&str> = name.splitn(3, '.').collect();
        assert!(parts[0].parse::<u64>().is_ok());
        assert!(parts[1].starts_with('M') && parts[1].contains('P') && parts[1].contains('Q'));
        assert_eq!(parts[2], "mx\\057a\\072b\\054c");
    }

    #[test]
    fn only_our_tmp_names_of_earlier_processes_count_as_dead_deliveries() {
        let own = rustix::process::getpid().as_raw_nonzero().get();
        let name = unique_name("mx.test");
        assert!(our_tmp_name(&name, "mx.test").is_some());
        assert!(
            !left_by_dead_delivery(&name, "mx.test"),
            "a name of this process is in flight"
        );
        let earlier = format!("1000.M5P{own}Q0.mx.test");
        assert_eq!(
            our_tmp_name(&earlier, "mx.test"),
            Some((Duration::new(1000, 5000), own as u32))
        );
        assert!(
            left_by_dead_delivery(&earlier, "mx.test"),
            "our pid, before we started"
        );
        assert!(left_by_dead_delivery(
            "1000.M5P1000000000Q0.quota.maildirsize",
            "mx.test"
        ));
        // pid 1 exists and is not us: its deliveries may still be running.
        assert!(!left_by_dead_delivery("1000.M5P1Q0.mx.test", "mx.test"));
        assert!(!left_by_dead_delivery(&earlier, "other.host"));
        assert!(!left_by_dead_delivery("1000.12345_6.mx.test", "mx.test"));
        assert!(!left_by_dead_delivery(
            "1000.M5P9Q0.mx.test,S=10",
            "mx.test"
        ));
        assert!(our_tmp_name("x.M5P9Q0.mx.test", "mx.test").is_none());
    }

    #[test]
    fn a_new_maildir_on_a_removed_ones_inode_does_not_inherit_its_scanned_usage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |path: &std::path::Path| {
            rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .expect("open the maildir")
        };
        // A Maildir whose usage had to be scanned (its maildirsize is a directory).
        let old = dir.path().join("old");
        std::fs::create_dir_all(old.join("cur")).unwrap();
        std::fs::create_dir(old.join("maildirsize")).unwrap();
        std::fs::write(old.join("cur/1.M1P1.h,S=9000:2,S"), b"x").unwrap();
        let root = open(&old);
        assert_eq!(usage_of(&root, 10_000), Some(9000));
        let inode = rustix::fs::fstat(&root).unwrap().st_ino;
        drop(root);
        std::fs::remove_dir_all(&old).unwrap();
        // Directories are made until one gets the removed one's inode (at once, usually).
        let reused = (0..1000).find_map(|i| {
            let path = dir.path().join(format!("new{i}"));
            std::fs::create_dir(&path).unwrap();
            let root = open(&path);
            (rustix::fs::fstat(&root).unwrap().st_ino == inode).then_some((path, root))
        });
        let (path, root) = reused.expect("the file system reused the inode (the premise)");
        std::fs::create_dir(path.join("cur")).unwrap();
        std::fs::create_dir(path.join("maildirsize")).unwrap();
        assert_eq!(usage_of(&root, 10_000), Some(0), "an empty Maildir");
    }

    #[test]
    fn size_field_is_parsed() {
        assert_eq!(size_from_name("1.M2P3.h,S=1000,W=1030:2,FRSa"), Some(1000));
        assert_eq!(size_from_name("1.M2P3.h"), None);
    }
}
