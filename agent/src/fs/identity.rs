//! The mailbox owner's identity for file system access (virtual(8) V16, docs/DELIVERY.md).
//!
//! # Security
//!
//! Every file and directory below the mailbox base is created and written with the recipient's
//! uid/gid, enforced by the kernel. We use Linux's *file system* ids: `setfsuid`/`setfsgid` act
//! on the calling thread only (glibc does not broadcast them to other threads, unlike
//! `seteuid`), and a non-zero fsuid makes the kernel drop the file-related capabilities
//! (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_CHOWN`, ...) from that thread's effective set, so
//! permission checks, file ownership and disk quotas are the recipient's. The switch is scoped
//! by [`FsIdentity`], whose `Drop` restores the previous ids, and it is verified: `setfsuid`
//! does not report failure, so we read the id back and refuse to continue when it did not take.
//!
//! Supplementary groups would still grant access with a switched fsgid, so the process drops
//! them at start ([`drop_supplementary_groups`]). uid 0 and gid 0 are refused everywhere.
//!
//! The directory says which uid owns each mailbox, and anyone who may write the directory's
//! ConfigMaps can rewrite it, `minimumUid` included. The agent therefore has a floor of its own
//! ([`set_uid_floor`], the `--minimum-uid` flag the operator sets from the MailServer, never
//! read from the directory): no uid below it is accepted (delivery's uid check reads
//! [`uid_floor`]) or assumed ([`FsIdentity::assume`]), whatever the directory says.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::{Gid, Uid, setfsgid, setfsuid, setgroups};

/// The floor when none is set: Postfix's `virtual_minimum_uid` default, as the MailServer's.
pub const DEFAULT_UID_FLOOR: u32 = 100;

static UID_FLOOR: AtomicU32 = AtomicU32::new(DEFAULT_UID_FLOOR);

/// Set the process's uid floor (at least 1). Call once at start, from the command line.
pub fn set_uid_floor(floor: u32) {
    UID_FLOOR.store(floor.max(1), Ordering::Relaxed);
}

/// The smallest uid this process delivers as (see [`set_uid_floor`]).
pub fn uid_floor() -> u32 {
    UID_FLOOR.load(Ordering::Relaxed)
}

/// Why [`FsIdentity::assume`] refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityError {
    /// What happened.
    pub reason: String,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for IdentityError {}

/// Drop every supplementary group of the process (Postfix `set_eugid()` keeps only the
/// recipient's gid, virtual(8) V16). Call once at start, before threads that deliver exist.
pub fn drop_supplementary_groups() -> std::io::Result<()> {
    setgroups(&[]).map_err(std::io::Error::from)
}

/// `setfsuid(-1)` never changes the id and returns the current one.
fn current_fsuid() -> u32 {
    setfsuid(Uid::from_raw(u32::MAX)).as_raw()
}

fn current_fsgid() -> u32 {
    setfsgid(Gid::from_raw(u32::MAX)).as_raw()
}

/// The calling thread's file system identity switched to a recipient; restored on drop.
#[derive(Debug)]
pub struct FsIdentity {
    previous_uid: u32,
    previous_gid: u32,
}

impl FsIdentity {
    /// Switch this thread's fsgid then fsuid to `uid`/`gid`. Refuses 0 and -1; fails when the
    /// kernel did not apply the switch (e.g. the process lacks CAP_SETUID).
    pub fn assume(uid: u32, gid: u32) -> Result<FsIdentity, IdentityError> {
        if uid == 0 || gid == 0 || uid == u32::MAX || gid == u32::MAX || uid < uid_floor() {
            return Err(IdentityError {
                reason: format!(
                    "refusing uid/gid {uid}/{gid} (the agent's uid floor is {})",
                    uid_floor()
                ),
            });
        }
        // Group first, as Postfix's set_eugid() does; undone by the guard if the uid switch fails.
        let previous_gid = setfsgid(Gid::from_raw(gid)).as_raw();
        let guard_gid = RestoreGid(previous_gid);
        if current_fsgid() != gid {
            return Err(IdentityError {
                reason: format!("setfsgid({gid}) did not take effect"),
            });
        }
        let previous_uid = setfsuid(Uid::from_raw(uid)).as_raw();
        if current_fsuid() != uid {
            setfsuid(Uid::from_raw(previous_uid));
            return Err(IdentityError {
                reason: format!("setfsuid({uid}) did not take effect"),
            });
        }
        std::mem::forget(guard_gid);
        Ok(FsIdentity {
            previous_uid,
            previous_gid,
        })
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        setfsuid(Uid::from_raw(self.previous_uid));
        setfsgid(Gid::from_raw(self.previous_gid));
        // A thread that cannot get its identity back must not serve anything else.
        if current_fsuid() != self.previous_uid || current_fsgid() != self.previous_gid {
            eprintln!("fatal: cannot restore the file system identity of a delivery thread");
            std::process::abort();
        }
    }
}

/// Restores the fsgid if the uid switch fails.
struct RestoreGid(u32);

impl Drop for RestoreGid {
    fn drop(&mut self) {
        setfsgid(Gid::from_raw(self.0));
    }
}
