//! The file system mechanisms every part of the agent that writes to the mailbox volume relies
//! on: containment below the mailbox base, the per-thread identity switch, mbox locks, the
//! mailbox layout that provisioning and delivery share, and the I/O loops around them.
//!
//! # Security
//!
//! Everything here runs on a volume shared by mutually distrusting mailbox owners, with paths
//! and ids from a directory that is not trusted. [`containment`] opens every path below the
//! base with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and refuses directories another
//! user controls; [`identity`] switches the calling thread's fsuid/fsgid so the kernel enforces
//! each mailbox's owner; [`lock`] takes and breaks locks without ever removing a file that is
//! not provably a stale lock. Callers above this module decide *what* to do and how a failure
//! reads; they resolve no path below the base themselves, only single names relative to a
//! directory [`containment`] opened.

pub mod containment;
pub mod identity;
pub mod layout;
pub mod lock;

use std::os::fd::AsFd;

use rustix::io::Errno;

// std's `write_all`/`read_exact_at` need a `File`, which would take ownership of descriptors
// that are opened, locked and dropped in a deliberate order here; these loops work on any fd.

/// Write everything at the file offset, resuming after short writes and EINTR.
pub fn write_all(fd: impl AsFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match rustix::io::write(&fd, data) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// Write everything at `offset`, resuming after short writes and EINTR.
pub fn write_all_at(fd: impl AsFd, data: &[u8], offset: u64) -> Result<(), Errno> {
    let mut written = 0;
    while written < data.len() {
        match rustix::io::pwrite(&fd, &data[written..], offset + written as u64) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => written += n,
            Err(Errno::INTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// Fill `buffer` from `offset`, resuming after short reads and EINTR; fewer bytes only at the
/// end of the file. Returns how many were read.
pub fn read_at(fd: impl AsFd, buffer: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut filled = 0;
    while filled < buffer.len() {
        match rustix::io::pread(&fd, &mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(filled)
}
