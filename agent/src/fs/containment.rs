//! Path containment below the mailbox base (docs/DELIVERY.md).
//!
//! # Security
//!
//! The directory is not trusted: a mailbox path could name `..`, an absolute path or a NUL, and
//! a user with shell access to the volume could plant symlinks. Every path is therefore checked
//! lexically first ([`check_mailbox_path`], the rule the compiler applies too) and then opened *relative to a directory descriptor of
//! the base* with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: the
//! kernel refuses any resolution that would leave the base or cross a symlink in any component,
//! including the last, so a swap of a directory for a symlink between check and use cannot
//! redirect a write. Later operations (create, link, rename, unlink) take a descriptor of the
//! already-opened parent directory and a single name without `/`, so they stay inside too.
//!
//! Only the base itself is opened by its absolute path: it comes from the administrator's
//! configuration and may legitimately be reached through a symlink.
//!
//! Mailbox users share the volume, and directories like a domain directory holding dotlocked
//! mboxes are writable by all of them (1777). A co-tenant could create a directory that will lie
//! on someone else's mailbox path before it is provisioned, and later move or delete what lands
//! in it. So every existing directory below the base that a path walks through must be
//! [`trusted`]: owned by root or by the mailbox's uid, and sticky if group or others may write
//! it. [`open_dirs`] and [`make_dirs`] walk one component at a time and check each.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
#[cfg(doc)]
use virtmail_crds::contract::check_mailbox_path;

/// Flags of every open below the base.
pub const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// `openat2` below `dir` with [`RESOLVE`]. Retries the rare EAGAIN/EINTR the kernel returns
/// when a concurrent rename raced with the resolution.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let mut attempts = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, mode, RESOLVE) {
            Err(Errno::AGAIN | Errno::INTR) if attempts < 8 => attempts += 1,
            other => return other,
        }
    }
}

/// Open an existing directory below `dir` for reading (usable for `fsync` and as a dirfd).
/// No `O_NOFOLLOW`: with `O_DIRECTORY` it would turn a final symlink into ENOTDIR, while
/// RESOLVE_NO_SYMLINKS reports it as ELOOP, which we classify as unsafe.
pub fn open_dir(dir: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, Errno> {
    open_beneath(dir, path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
}

/// A failure while walking or creating directories: the errno and the path walked so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkError {
    /// The error (EPERM for an untrusted directory).
    pub errno: Errno,
    /// Path (relative to the start) of the component that failed.
    pub at: String,
    /// Set when the directory exists but is not [`trusted`]: its owner uid, its mode, and
    /// whether that owner is someone other than root and the mailbox's uid.
    pub untrusted: Option<(u32, u32, bool)>,
}

impl WalkError {
    fn errno(errno: Errno, at: &str) -> WalkError {
        WalkError {
            errno,
            at: at.to_string(),
            untrusted: None,
        }
    }

    /// Why an untrusted directory is refused, for warnings and conditions.
    pub fn untrusted_reason(&self) -> Option<String> {
        let (uid, mode, foreign) = self.untrusted?;
        Some(if foreign {
            format!("directory {} is owned by uid {uid}", self.at)
        } else {
            format!(
                "directory {} (uid {uid}, mode {:o}) is writable by others and not sticky",
                self.at,
                mode & 0o7777
            )
        })
    }
}

/// Whether a directory on a mailbox path of `owner` may be used: owned by root or `owner`, and
/// sticky when group or others may write it (so nobody else can rename or remove what is in
/// it).
pub fn trusted(stat: &rustix::fs::Stat, owner: u32) -> bool {
    let shared = stat.st_mode & 0o022 != 0;
    (stat.st_uid == 0 || stat.st_uid == owner) && (!shared || stat.st_mode & 0o1000 != 0)
}

fn check_trusted(fd: &OwnedFd, owner: u32, at: &str) -> Result<(), WalkError> {
    let stat = rustix::fs::fstat(fd).map_err(|errno| WalkError::errno(errno, at))?;
    if trusted(&stat, owner) {
        Ok(())
    } else {
        Err(WalkError {
            errno: Errno::PERM,
            at: at.to_string(),
            untrusted: Some((
                stat.st_uid,
                stat.st_mode,
                stat.st_uid != 0 && stat.st_uid != owner,
            )),
        })
    }
}

/// Open the existing directory `path` below `dir` one component at a time, each [`trusted`]
/// for `owner`.
pub fn open_dirs(dir: BorrowedFd<'_>, path: &str, owner: u32) -> Result<OwnedFd, WalkError> {
    walk(dir, path, Some(owner), None).map(|(fd, _)| fd)
}

/// Open the directory `path` below `dir`, creating every missing component with `mode` (Postfix
/// `make_dirs()`, virtual(8) V24) as the current file system identity. Each component is resolved
/// with [`RESOLVE`] from the descriptor of its parent, so nothing outside `dir` is touched, and
/// each existing one must be [`trusted`] for `owner`. Returns the directory and whether any
/// component was created.
pub fn make_dirs(
    dir: BorrowedFd<'_>,
    path: &str,
    mode: Mode,
    owner: u32,
) -> Result<(OwnedFd, bool), WalkError> {
    walk(dir, path, Some(owner), Some(mode))
}

/// [`make_dirs`] below a directory the caller has already checked to be the mailbox owner's
/// own (a Maildir's `tmp/ new/ cur/`): nobody else can have created anything in it, so the
/// components are not checked again (the caller checks what it writes to).
pub fn make_dirs_in_own_dir(
    dir: BorrowedFd<'_>,
    path: &str,
    mode: Mode,
) -> Result<(OwnedFd, bool), WalkError> {
    walk(dir, path, None, Some(mode))
}

fn walk(
    dir: BorrowedFd<'_>,
    path: &str,
    owner: Option<u32>,
    create: Option<Mode>,
) -> Result<(OwnedFd, bool), WalkError> {
    let mut current: Option<OwnedFd> = None;
    let mut walked = String::new();
    let mut created = false;
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (index, component) in components.iter().enumerate() {
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(component);
        let parent = current.as_ref().map(|fd| fd.as_fd()).unwrap_or(dir);
        let fail = |errno| WalkError::errno(errno, &walked);
        // Directories passed through need only search permission (a 0711 domain directory):
        // `O_PATH`, enough for `fstat` and as the base of the next open. The last one is opened
        // for reading (fsync, listing), as a one-step open of the whole path would.
        let open = |parent: BorrowedFd<'_>| {
            if index + 1 == components.len() {
                open_dir(parent, component)
            } else {
                open_beneath(
                    parent,
                    component,
                    OFlags::PATH | OFlags::DIRECTORY,
                    Mode::empty(),
                )
            }
        };
        let next = match (open(parent), create) {
            (Ok(fd), _) => fd,
            (Err(Errno::NOENT), Some(mode)) => {
                match rustix::fs::mkdirat(parent, *component, mode) {
                    Ok(()) => created = true,
                    // Another delivery created it meanwhile.
                    Err(Errno::EXIST) => {}
                    Err(errno) => return Err(fail(errno)),
                }
                open(parent).map_err(fail)?
            }
            (Err(errno), _) => return Err(fail(errno)),
        };
        if let Some(owner) = owner {
            check_trusted(&next, owner, &walked)?;
        }
        current = Some(next);
    }
    match current {
        Some(fd) => Ok((fd, created)),
        None => open_dir(dir, ".")
            .map(|fd| (fd, false))
            .map_err(|errno| WalkError::errno(errno, ".")),
    }
}

/// Whether an errno from a [`RESOLVE`] open means the path is unsafe rather than unusable:
/// ELOOP (a symlink, refused by RESOLVE_NO_SYMLINKS) or EXDEV (an escape from the base).
pub fn unsafe_errno(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::LOOP => Some("crosses a symbolic link"),
        Errno::XDEV => Some("leaves the mailbox base"),
        _ => None,
    }
}
