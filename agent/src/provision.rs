//! Provisioning ("volume layouts"): on each new directory version, create what is missing — the
//! Maildir with `tmp/ new/ cur/` or the mbox file — owned by the mailbox's uid/gid with modes
//! 0700/0600, and report per mailbox whether it is there with the right owner.
//!
//! Layout rules (documented for administrators in docs/PROVISIONING.md):
//! - Missing parent directories of a mailbox (e.g. `<domain>/`) are created by the agent as root,
//!   mode 0711: every mailbox owner can pass through, nobody can list them. The parent of an mbox
//!   that is dotlocked gets mode 1777 (sticky, like `/var/mail`), because the recipient must
//!   create `<mbox>.lock` beside it (virtual(8) V19).
//! - A Maildir is created *as the recipient* (so quotas and ownership are the kernel's doing);
//!   an mbox file is created by root and given to the recipient with `fchown` (CAP_CHOWN), since
//!   its parent may be shared.
//! - Existing mail is never deleted, moved or chmod'ed. An existing path with the wrong owner, a
//!   symlink, or the wrong type is reported, not "fixed". Removed mailboxes keep their data.
//!
//! # Security
//!
//! Every path is checked lexically and opened relative to a descriptor of the base with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (see
//! [`crate::fs::containment`]); work as the recipient happens under a per-thread file system
//! identity ([`crate::fs::identity::FsIdentity`]) on the calling thread only.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use virtmail_crds::Directory;
use virtmail_crds::contract;
use virtmail_crds::directory::{MailboxEntry, Part};
use virtmail_crds::resources::{LockMethod, MailboxFormat};

use crate::fs::containment::{make_dirs, open_beneath, open_dir};
use crate::fs::identity::{FsIdentity, uid_floor};
use crate::fs::layout::{
    MAIL_FILE_MODE, MAILDIR_MODE, MAILDIR_SUBDIRECTORIES, SHARED_PARENT_MODE, WRITABLE_PARENT_MODE,
    parent_modes, split_parent,
};

/// Result for one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Folded address.
    pub address: String,
    /// Name of the Mailbox object.
    pub object: String,
    /// Absolute path.
    pub path: String,
    /// What was found or done.
    pub state: State,
}

/// Provisioning state of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Present with the right owner (nothing to do).
    Present,
    /// Created now (or completed: a missing `tmp/ new/ cur/`).
    Created,
    /// Not usable; `reason` is a stable PascalCase word.
    Problem {
        /// `Deferring`, `Symlink`, `WrongType`, `OwnerMismatch`, `InvalidPath`, `Unreachable`,
        /// `IoError`, `UnsafeDirectory`, `ForeignLock`, `InvalidOwner`.
        reason: &'static str,
        /// Detail for people.
        message: String,
    },
}

impl State {
    /// `(status, reason, message)` of the `Provisioned` condition.
    pub fn condition(&self, path: &str) -> (bool, &'static str, String) {
        match self {
            State::Present => (
                true,
                "Present",
                format!("{path} exists with the right owner"),
            ),
            State::Created => (true, "Created", format!("{path} created")),
            State::Problem { reason, message } => (false, reason, message.clone()),
        }
    }
}

fn problem(reason: &'static str, message: impl Into<String>) -> State {
    State::Problem {
        reason,
        message: message.into(),
    }
}

fn errno_problem(what: &str, path: &str, errno: Errno) -> State {
    match errno {
        Errno::LOOP | Errno::XDEV => problem(
            "Symlink",
            format!("{what} {path} crosses a symbolic link or leaves the base; not touched"),
        ),
        Errno::NOTDIR => problem(
            "WrongType",
            format!("{what} {path}: a component is not a directory"),
        ),
        Errno::ACCESS | Errno::PERM => {
            problem("Unreachable", format!("{what} {path}: permission denied"))
        }
        other => problem("IoError", format!("{what} {path}: {other}")),
    }
}

/// What provisioning decides from the whole directory before any mailbox: whether mboxes are
/// dotlocked, and the mode of each parent directory (which depends on every mailbox below it).
#[derive(Debug, Clone)]
pub struct Plan {
    dotlock: bool,
    modes: std::collections::BTreeMap<String, u32>,
}

impl Plan {
    /// The plan for `directory`.
    pub fn new(directory: &Directory) -> Plan {
        let dotlock = directory
            .settings
            .mailbox_lock
            .contains(&LockMethod::Dotlock);
        // Order does not matter here: walk the parts as they are, not merged into key order.
        let entries = directory.mailboxes.parts().iter().flat_map(|p| p.values());
        Plan {
            dotlock,
            modes: parent_modes(entries, dotlock),
        }
    }
}

/// Provision the mailboxes of one part of the mailbox table (a shard slot) as `plan` says: a
/// round goes part by part, so it holds one part's reports at a time, and after a new version
/// only the parts it does not share with the last version provisioned. Blocking; call it on a
/// thread of its own (it switches that thread's file system identity while it works).
pub fn provision_part(
    base: &OwnedFd,
    base_path: &str,
    part: &Part<MailboxEntry>,
    plan: &Plan,
) -> Vec<Report> {
    part.iter()
        .map(|(address, entry)| {
            let parent = split_parent(&entry.path).0.unwrap_or_default();
            let mode = plan
                .modes
                .get(parent)
                .copied()
                .unwrap_or(SHARED_PARENT_MODE);
            Report {
                address: address.clone(),
                object: entry.object.clone(),
                path: format!("{base_path}/{}", entry.path),
                state: provision_with_parent_mode(base, entry, plan.dotlock, mode),
            }
        })
        .collect()
}

/// Provision one mailbox, its parent directory's mode decided from this mailbox alone (a round
/// decides it from every mailbox: [`Plan`]).
pub fn provision_one(base: &OwnedFd, entry: &MailboxEntry, dotlock: bool) -> State {
    let modes = parent_modes([entry], dotlock);
    let mode = split_parent(&entry.path)
        .0
        .and_then(|p| modes.get(p).copied())
        .unwrap_or(SHARED_PARENT_MODE);
    provision_with_parent_mode(base, entry, dotlock, mode)
}

/// Provision one mailbox; a missing parent directory is created with `parent_mode`, and one the
/// agent created earlier with a narrower mode is widened to it.
fn provision_with_parent_mode(
    base: &OwnedFd,
    entry: &MailboxEntry,
    dotlock: bool,
    parent_mode: u32,
) -> State {
    if let Some(deferral) = &entry.defer {
        return problem(
            "Deferring",
            format!("{}: {}", deferral.reason, deferral.message),
        );
    }
    if entry.uid == 0 || entry.gid == 0 {
        return problem("InvalidOwner", "uid/gid 0 is never used");
    }
    let floor = uid_floor();
    if entry.uid < floor {
        return problem(
            "InvalidOwner",
            format!(
                "uid {} is below the agent's --minimum-uid {floor} (set from the MailServer); not provisioned",
                entry.uid
            ),
        );
    }
    if let Err(p) = contract::check_mailbox_path(&entry.path) {
        return problem(
            "InvalidPath",
            format!("path {} {}", entry.path, p.describe()),
        );
    }
    let (parent, leaf) = split_parent(&entry.path);
    let parent_mode = Mode::from_raw_mode(parent_mode);
    let parent_fd = match parent {
        None => match open_dir(base.as_fd(), ".") {
            Ok(fd) => fd,
            Err(e) => return errno_problem("mailbox base", ".", e),
        },
        Some(parent) => match make_dirs(base.as_fd(), parent, parent_mode, entry.uid) {
            Ok((fd, created)) => {
                if created || made_by_agent_narrower(&fd, parent_mode) {
                    // mkdir applies the umask; set the documented mode on what we just made, or
                    // widen what we made earlier for a mailbox that needed less.
                    let _ = rustix::fs::fchmod(&fd, parent_mode);
                }
                fd
            }
            Err(e) => {
                if let Some(reason) = e.untrusted_reason() {
                    return problem(
                        "UnsafeDirectory",
                        format!(
                            "{reason}: another user could move or remove the mailbox; not used"
                        ),
                    );
                }
                return errno_problem("parent directory", &e.at, e.errno);
            }
        },
    };
    match entry.format {
        MailboxFormat::Maildir => maildir(&parent_fd, leaf, entry),
        MailboxFormat::Mbox => match mbox(&parent_fd, leaf, entry) {
            ok @ (State::Present | State::Created) if dotlock => {
                match dotlock_possible(&parent_fd, leaf, entry) {
                    Ok(()) => ok,
                    Err(state) => state,
                }
            }
            other => other,
        },
    }
}

/// Whether `dir` is a parent directory as the agent creates it (root's, group root, exactly
/// mode 0711) while `wanted` is wider (1777). Only that is ever changed: an administrator's
/// directory (another owner or another mode) is left as it is.
fn made_by_agent_narrower(dir: &OwnedFd, wanted: Mode) -> bool {
    let Ok(stat) = rustix::fs::fstat(dir) else {
        return false;
    };
    wanted.bits() == WRITABLE_PARENT_MODE
        && stat.st_uid == 0
        && stat.st_gid == 0
        && stat.st_mode & 0o7777 == SHARED_PARENT_MODE
}

fn owner_check(
    fd: &OwnedFd,
    entry: &MailboxEntry,
    path: &str,
    want: FileType,
) -> Result<(), State> {
    let stat = rustix::fs::fstat(fd).map_err(|e| errno_problem("stat", path, e))?;
    if FileType::from_raw_mode(stat.st_mode) != want {
        return Err(problem(
            "WrongType",
            format!("{path} is not a {}", kind_name(want)),
        ));
    }
    if stat.st_uid != entry.uid {
        return Err(problem(
            "OwnerMismatch",
            format!(
                "{path} is owned by uid {}, the Mailbox says {}; not changed",
                stat.st_uid, entry.uid
            ),
        ));
    }
    Ok(())
}

fn kind_name(t: FileType) -> &'static str {
    if t == FileType::Directory {
        "directory"
    } else {
        "regular file"
    }
}

/// Give what root just created to the mailbox's owner with `mode`: the mode first, while root
/// still owns it, as only CAP_FOWNER (which the agent's container lacks) could change it after.
fn hand_over(fd: &OwnedFd, mode: u32, entry: &MailboxEntry) -> Result<(), Errno> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(entry.uid)),
        Some(rustix::fs::Gid::from_raw(entry.gid)),
    )
}

fn maildir(parent: &OwnedFd, leaf: &str, entry: &MailboxEntry) -> State {
    let path = &entry.path;
    // The maildir itself is made by root (its parent may be a shared, root-owned directory) and
    // given to the recipient before anything is put in it.
    let created = match open_dir(parent.as_fd(), leaf) {
        Ok(_) => false,
        Err(Errno::NOENT) => {
            match rustix::fs::mkdirat(parent, leaf, Mode::from_raw_mode(MAILDIR_MODE)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(e) => return errno_problem("create maildir", path, e),
            }
        }
        Err(e) => return errno_problem("open maildir", path, e),
    };
    let dir = match open_dir(parent.as_fd(), leaf) {
        Ok(fd) => fd,
        Err(e) => return errno_problem("open maildir", path, e),
    };
    if created {
        let stat = match rustix::fs::fstat(&dir) {
            Ok(stat) => stat,
            Err(e) => return errno_problem("stat", path, e),
        };
        // Only what we just made (still root's) is handed over; anything else is left alone.
        if stat.st_uid == 0
            && let Err(e) = hand_over(&dir, MAILDIR_MODE, entry)
        {
            return errno_problem("chown", path, e);
        }
    }
    if let Err(state) = owner_check(&dir, entry, path, FileType::Directory) {
        return state;
    }
    // tmp/ new/ cur/ are created as the recipient.
    let identity = match FsIdentity::assume(entry.uid, entry.gid) {
        Ok(identity) => identity,
        Err(e) => {
            return problem(
                "IoError",
                format!("cannot switch to {}/{}: {e}", entry.uid, entry.gid),
            );
        }
    };
    let mut completed = created;
    for sub in MAILDIR_SUBDIRECTORIES {
        let sub_path = format!("{path}{sub}");
        match open_dir(dir.as_fd(), sub) {
            Ok(fd) => {
                if let Err(state) = owner_check(&fd, entry, &sub_path, FileType::Directory) {
                    return state;
                }
            }
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, sub, Mode::from_raw_mode(MAILDIR_MODE)) {
                    Ok(()) | Err(Errno::EXIST) => completed = true,
                    Err(e) => return errno_problem("create", &sub_path, e),
                }
            }
            Err(e) => return errno_problem("open", &sub_path, e),
        }
    }
    drop(identity);
    if completed {
        State::Created
    } else {
        State::Present
    }
}

fn mbox(parent: &OwnedFd, leaf: &str, entry: &MailboxEntry) -> State {
    let path = &entry.path;
    let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    match open_beneath(parent.as_fd(), leaf, flags, Mode::empty()) {
        Ok(fd) => match owner_check(&fd, entry, path, FileType::RegularFile) {
            Ok(()) => State::Present,
            Err(state) => state,
        },
        Err(Errno::NOENT) => {
            let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
            match open_beneath(
                parent.as_fd(),
                leaf,
                create,
                Mode::from_raw_mode(MAIL_FILE_MODE),
            ) {
                Ok(fd) => match hand_over(&fd, MAIL_FILE_MODE, entry) {
                    Ok(()) => State::Created,
                    Err(e) => errno_problem("chown", path, e),
                },
                // Created by a delivery meanwhile: examine it next time.
                Err(Errno::EXIST) => State::Present,
                Err(e) => errno_problem("create mbox", path, e),
            }
        }
        // A FIFO would block a plain open; O_NONBLOCK makes it ENXIO.
        Err(Errno::NXIO) => problem("WrongType", format!("{path} is not a regular file")),
        Err(Errno::ISDIR) => problem("WrongType", format!("{path} is a directory")),
        Err(e) => errno_problem("open mbox", path, e),
    }
}

/// Whether the recipient can create `<mbox>.lock` beside the mbox (virtual(8) V19: a dotlock needs a
/// parent directory the recipient may write). Probed by taking and releasing the lock once.
fn dotlock_possible(parent: &OwnedFd, leaf: &str, entry: &MailboxEntry) -> Result<(), State> {
    let lock = contract::dotlock_name(leaf);
    let _identity = FsIdentity::assume(entry.uid, entry.gid).map_err(|e| {
        problem(
            "IoError",
            format!("cannot switch to {}/{}: {e}", entry.uid, entry.gid),
        )
    })?;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
    match open_beneath(parent.as_fd(), &lock, flags, Mode::empty()) {
        Ok(fd) => {
            drop(fd);
            let _ = rustix::fs::unlinkat(parent, lock.as_str(), rustix::fs::AtFlags::empty());
            Ok(())
        }
        // Held by a delivery right now: evidently possible; unless another user planted it.
        Err(Errno::EXIST) => {
            match rustix::fs::statat(parent, lock.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if stat.st_uid != entry.uid && stat.st_uid != 0 => Err(problem(
                    "ForeignLock",
                    format!(
                        "{}.lock is owned by uid {}, not {}: another user holds the mailbox's \
                         lock name; deliveries defer until it is removed",
                        entry.path, stat.st_uid, entry.uid
                    ),
                )),
                _ => Ok(()),
            }
        }
        Err(Errno::ACCESS | Errno::PERM) => Err(problem(
            "DotlockNotPossible",
            format!(
                "uid {} cannot create {}.lock beside the mbox: make its directory writable for \
                 the owner (mode 1777, like /var/mail) or remove dotlock from mailboxLock",
                entry.uid, entry.path
            ),
        )),
        Err(e) => Err(errno_problem("dotlock", &entry.path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mailbox of `directory`, part by part, as a round does.
    fn provision_all(base: &OwnedFd, base_path: &str, directory: &Directory) -> Vec<Report> {
        let plan = Plan::new(directory);
        directory
            .mailboxes
            .parts()
            .iter()
            .flat_map(|part| provision_part(base, base_path, part, &plan))
            .collect()
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use virtmail_crds::directory::Deferral;

    fn entry(path: &str, format: MailboxFormat, uid: u32) -> MailboxEntry {
        MailboxEntry {
            path: path.into(),
            format,
            uid,
            gid: uid,
            quota: None,
            suspended: false,
            defer: None,
            object: "o".into(),
            autoreply: None,
        }
    }

    /// The reason of a problem, `None` for a usable mailbox.
    fn reason(state: State) -> Option<&'static str> {
        match state {
            State::Problem { reason, .. } => Some(reason),
            State::Present | State::Created => None,
        }
    }

    fn base() -> (tempfile::TempDir, OwnedFd) {
        assert!(
            rustix::process::geteuid().is_root(),
            "provisioning tests need root (real uids)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .expect("open base");
        (dir, fd)
    }

    #[test]
    fn creates_maildir_as_recipient_with_tmp_new_cur_and_parent_0711() {
        let (dir, fd) = base();
        let e = entry("d.test/alice/", MailboxFormat::Maildir, 5101);
        assert_eq!(provision_one(&fd, &e, true), State::Created);
        let root = dir.path().join("d.test");
        let meta = std::fs::metadata(&root).expect("parent");
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o711));
        for sub in ["", "tmp", "new", "cur"] {
            let m = std::fs::metadata(root.join("alice").join(sub)).expect("maildir part");
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o777),
                (5101, 5101, 0o700),
                "{sub}"
            );
        }
        assert_eq!(
            provision_one(&fd, &e, true),
            State::Present,
            "second run changes nothing"
        );
    }

    #[test]
    fn creates_mbox_0600_owned_by_recipient_in_sticky_parent() {
        let (dir, fd) = base();
        let e = entry("d.test/bob", MailboxFormat::Mbox, 5102);
        assert_eq!(provision_one(&fd, &e, true), State::Created);
        let m = std::fs::metadata(dir.path().join("d.test/bob")).expect("mbox");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777, m.len()),
            (5102, 5102, 0o600, 0)
        );
        let p = std::fs::metadata(dir.path().join("d.test")).expect("parent");
        assert_eq!(p.mode() & 0o7777, 0o1777);
        assert_eq!(provision_one(&fd, &e, true), State::Present);
    }

    #[test]
    fn existing_mail_with_wrong_owner_is_reported_not_fixed() {
        let (dir, fd) = base();
        std::fs::write(dir.path().join("carol"), b"From x\n\nold mail\n").expect("mbox");
        std::os::unix::fs::chown(dir.path().join("carol"), Some(5200), Some(5200)).expect("chown");
        let e = entry("carol", MailboxFormat::Mbox, 5103);
        // (dotlock off: only the owner is examined)
        assert_eq!(reason(provision_one(&fd, &e, true)), Some("OwnerMismatch"));
        let m = std::fs::metadata(dir.path().join("carol")).expect("kept");
        assert_eq!((m.uid(), m.len()), (5200, 17), "nothing changed");
    }

    #[test]
    fn symlinks_and_wrong_types_are_reported_and_nothing_outside_is_touched() {
        let (dir, fd) = base();
        let outside = tempfile::tempdir().expect("outside");
        symlink(outside.path(), dir.path().join("evil")).expect("symlink");
        let e = entry("evil/alice/", MailboxFormat::Maildir, 5104);
        assert_eq!(reason(provision_one(&fd, &e, true)), Some("Symlink"));
        symlink(outside.path().join("target"), dir.path().join("link-mbox")).expect("symlink");
        let e = entry("link-mbox", MailboxFormat::Mbox, 5104);
        assert_eq!(reason(provision_one(&fd, &e, true)), Some("Symlink"));
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("outside").count(),
            0
        );
        std::fs::create_dir(dir.path().join("a-dir")).expect("dir");
        let e = entry("a-dir", MailboxFormat::Mbox, 5104);
        assert_eq!(reason(provision_one(&fd, &e, true)), Some("WrongType"));
        std::fs::write(dir.path().join("a-file"), b"").expect("file");
        let e = entry("a-file/", MailboxFormat::Maildir, 5104);
        assert!(reason(provision_one(&fd, &e, true)).is_some());
    }

    #[test]
    fn v19_mbox_in_a_directory_the_owner_cannot_write_reports_dotlock_not_possible() {
        let (dir, fd) = base();
        let e = entry("dave", MailboxFormat::Mbox, 5106);
        // The base is root's 0755: the file is created, the dotlock could never be.
        assert_eq!(
            reason(provision_one(&fd, &e, true)),
            Some("DotlockNotPossible")
        );
        assert!(dir.path().join("dave").is_file());
        assert!(!dir.path().join("dave.lock").exists());
        assert_eq!(
            provision_one(&fd, &e, false),
            State::Present,
            "fine without dotlock"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        assert_eq!(provision_one(&fd, &e, true), State::Present);
        assert!(
            !dir.path().join("dave.lock").exists(),
            "the probe releases its lock"
        );
    }

    #[test]
    fn directories_and_locks_of_other_users_on_the_path_are_reported_not_used() {
        let (dir, fd) = base();
        let shared = dir.path().join("d.test");
        std::fs::create_dir(&shared).expect("shared");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        // A co-tenant (5201) made the parent of alice's future Maildir.
        let team = shared.join("team");
        std::fs::create_dir(&team).expect("team");
        std::os::unix::fs::chown(&team, Some(5201), Some(5201)).expect("chown");
        std::fs::set_permissions(&team, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = entry("d.test/team/alice/", MailboxFormat::Maildir, 5107);
        assert_eq!(
            reason(provision_one(&fd, &e, true)),
            Some("UnsafeDirectory")
        );
        assert_eq!(std::fs::read_dir(&team).expect("team").count(), 0);
        // A root-owned directory others may write without the sticky bit: the same.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = entry("d.test/carol/", MailboxFormat::Maildir, 5107);
        assert_eq!(
            reason(provision_one(&fd, &e, true)),
            Some("UnsafeDirectory")
        );
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        // A co-tenant holds bob's lock name.
        let lock = shared.join("bob.lock");
        std::fs::write(&lock, b"").expect("lock");
        std::os::unix::fs::chown(&lock, Some(5201), Some(5201)).expect("chown");
        let e = entry("d.test/bob", MailboxFormat::Mbox, 5108);
        assert_eq!(reason(provision_one(&fd, &e, true)), Some("ForeignLock"));
        assert!(lock.exists(), "never removed");
    }

    #[test]
    fn uids_below_the_agents_floor_are_never_provisioned() {
        let (dir, fd) = base();
        let e = entry("low", MailboxFormat::Mbox, 2);
        assert_eq!(reason(provision_one(&fd, &e, false)), Some("InvalidOwner"));
        assert!(!dir.path().join("low").exists());
    }

    #[test]
    fn deferring_entries_are_not_provisioned() {
        let (dir, fd) = base();
        let mut e = entry("x/", MailboxFormat::Maildir, 5105);
        e.defer = Some(Box::new(Deferral {
            reason: virtmail_crds::Reason::InvalidOwner,
            message: "m".into(),
        }));
        assert_eq!(reason(provision_one(&fd, &e, true)), Some("Deferring"));
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn a_maildir_provisioned_first_does_not_make_its_dotlocked_neighbour_undeliverable() {
        let (dir, fd) = base();
        let mut directory = Directory::synthetic(0);
        directory.mailboxes.clear();
        directory.settings.mailbox_lock = vec![LockMethod::Fcntl, LockMethod::Dotlock];
        // "alice" sorts first: her Maildir is provisioned before bob's mbox in the same directory.
        directory.mailboxes.insert(
            "alice@d.test".into(),
            entry("d.test/alice/", MailboxFormat::Maildir, 5101),
        );
        directory.mailboxes.insert(
            "bob@d.test".into(),
            entry("d.test/bob", MailboxFormat::Mbox, 5102),
        );
        let base_path = dir.path().display().to_string();
        let reports = provision_all(&fd, &base_path, &directory);
        for report in &reports {
            assert_eq!(report.state, State::Created, "{report:?}");
        }
        let mode = |p: &str| std::fs::metadata(dir.path().join(p)).expect("stat").mode() & 0o7777;
        assert_eq!(mode("d.test"), 0o1777);

        // A directory the agent made 0711 for a Maildir alone is widened once an mbox joins it.
        directory.mailboxes.insert(
            "carol@e.test".into(),
            entry("e.test/carol/", MailboxFormat::Maildir, 5103),
        );
        provision_all(&fd, &base_path, &directory);
        assert_eq!(mode("e.test"), 0o711);
        directory.mailboxes.insert(
            "dave@e.test".into(),
            entry("e.test/dave", MailboxFormat::Mbox, 5104),
        );
        let reports = provision_all(&fd, &base_path, &directory);
        assert!(
            reports
                .iter()
                .all(|r| matches!(r.state, State::Created | State::Present)),
            "{reports:?}"
        );
        assert_eq!(mode("e.test"), 0o1777);

        // An administrator's directory (not root's 0711) is never changed: reported instead.
        std::fs::create_dir(dir.path().join("f.test")).expect("mkdir");
        std::fs::set_permissions(
            dir.path().join("f.test"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        directory.mailboxes.insert(
            "erin@f.test".into(),
            entry("f.test/erin", MailboxFormat::Mbox, 5105),
        );
        let reports = provision_all(&fd, &base_path, &directory);
        let erin = reports
            .iter()
            .find(|r| r.address == "erin@f.test")
            .expect("erin");
        assert_eq!(
            reason(erin.state.clone()),
            Some("DotlockNotPossible"),
            "{erin:?}"
        );
        assert_eq!(mode("f.test"), 0o755);

        // Without dotlocks, an mbox with an automatic reply still needs to write its state
        // beside it; a plain mbox does not.
        directory.settings.mailbox_lock = vec![LockMethod::Fcntl];
        directory.mailboxes.insert(
            "gus@g.test".into(),
            entry("g.test/gus", MailboxFormat::Mbox, 5106),
        );
        let mut away = entry("h.test/away", MailboxFormat::Mbox, 5107);
        away.autoreply = Some(Box::new(virtmail_crds::directory::Autoreply {
            subject: None,
            body: "away".into(),
            start: None,
            end: None,
            interval_seconds: 86_400,
        }));
        directory.mailboxes.insert("away@h.test".into(), away);
        provision_all(&fd, &base_path, &directory);
        assert_eq!(mode("g.test"), 0o711);
        assert_eq!(mode("h.test"), 0o1777);
    }
}
