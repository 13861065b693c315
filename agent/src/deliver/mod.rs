//! The delivery engine: Postfix virtual(8)-exact mbox and Maildir delivery (virtual(8) V1–V37) with
//! the deliberate improvements of docs/DELIVERY.md.
//!
//! Two entry points serve every caller:
//! - [`precheck`] at RCPT time: table lookups and checks knowable before the message (unknown
//!   user 5.1.1, suspended 4.2.1, deferring entry or bad owner/path 4.3.5, over quota 5.2.2);
//!   it returns the resolved [`Target`].
//! - [`deliver_one`] after DATA: one copy for one target, blocking, returning an [`Outcome`]
//!   whose [`Status`] is data. Deliveries of different recipients may run concurrently on
//!   different threads.
//!
//! [`Engine`] drives them for a server (a whole transaction, automatic replies after each
//! copy), [`deliver()`] for the `deliver` command. Neither knows a protocol: callers render the
//! [`Status`] (LMTP into a reply line, the command into a sysexits code with [`exit_code`]).
//!
//! # Security
//!
//! Nothing from the directory is trusted: uid/gid and paths are re-validated here, every open
//! below the base is contained ([`crate::fs::containment`]), and all disk access happens under
//! the recipient's file system identity ([`crate::fs::identity`]) for the duration of one call
//! on the calling thread. Callers must run [`crate::fs::identity::drop_supplementary_groups`]
//! once at start.

mod engine;
pub mod journal;
pub mod maildir;
pub mod mbox;
pub mod message;
pub mod status;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use virtmail_crds::Directory;
use virtmail_crds::address::fold;
use virtmail_crds::contract::{self, PathProblem};
use virtmail_crds::resources::{LockMethod, MailboxFormat};

pub use engine::{Delivery, Engine};
pub use message::crlf_to_lf;
pub use status::{Class, Code, Failure, Status, classify, exit_code};

use crate::fs::containment;
use crate::fs::identity::{FsIdentity, uid_floor};
use crate::fs::lock;
use status::Place;

/// Engine tunables.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to wait for a busy mbox lock before deferring 4.2.0 (Postfix: 20 attempts
    /// about 1 s apart).
    pub lock_timeout: Duration,
    /// Age (ctime) after which a dotlock is removed (Postfix `stale_lock_time`, 500 s).
    pub stale_lock_time: Duration,
    /// Host name in Maildir file names.
    pub hostname: String,
    /// Where automatic replies are handed to Postfix; `None`: no replies (the `deliver` CLI).
    pub submission: Option<crate::autoreply::Submission>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            lock_timeout: Duration::from_secs(20),
            stale_lock_time: lock::STALE_LOCK_TIME,
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into()),
            submission: None,
        }
    }
}

/// One envelope recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Final recipient as queued (after alias rewriting, unfolded, unquoted; LMTP's RCPT).
    pub address: String,
    /// Recipient before alias rewriting, for `X-Original-To` (empty: header omitted): LMTP's
    /// `ORCPT=rfc822;...` when given, else the RCPT address.
    pub original_recipient: String,
}

/// Sender and recipients of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// Recipients, delivered independently and in order (virtual(8) V1).
    pub recipients: Vec<Recipient>,
}

/// Mailbox format, decided by the path's trailing `/` (virtual(8) V15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `tmp/ new/ cur/`.
    Maildir,
    /// One file.
    Mbox,
}

/// A recipient resolved against the directory: where and as whom to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The recipient as given (used in `Delivered-To`).
    pub recipient: String,
    /// The folded table key that matched (virtual(8) V3).
    pub key: String,
    /// Name of the Mailbox object (for warnings and status).
    pub object: String,
    /// Absolute mailbox base.
    pub base: String,
    /// Path relative to the base, as in the directory.
    pub path: String,
    /// `base/path`, for texts (virtual(8) V14).
    pub full_path: String,
    /// Format.
    pub format: Format,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Per-mailbox quota in bytes.
    pub quota: Option<u64>,
    /// Largest mbox file / Maildir file (0: none).
    pub size_limit: u64,
    /// mbox lock methods.
    pub locks: Vec<LockMethod>,
}

/// Result of one delivery.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The recipient.
    pub recipient: String,
    /// Status (class, enhanced code, text, warning).
    pub status: Status,
    /// The mbox file or the Maildir file written (absolute), on success.
    pub path: Option<String>,
    /// Bytes written.
    pub size: u64,
    /// Time spent.
    pub duration: Duration,
}

fn unsafe_path(
    target_object: &str,
    recipient: &str,
    full: &str,
    problem: &str,
    place: Place,
) -> Failure {
    Failure::Unsafe {
        place,
        reason: format!("unsafe mailbox path: {problem}"),
        warning: format!(
            "Mailbox/{target_object} ({recipient}): path {full} {problem}: refusing delivery"
        ),
    }
}

/// Why an envelope address (sender, recipient, original recipient) may not be used, or `None`.
///
/// # Security
///
/// Envelope addresses are written into the mailbox: the sender into `Return-Path:` and the
/// mbox `From_` line, the recipients into `Delivered-To:` and `X-Original-To:`. A CR, LF or
/// NUL there would end the header early and let the sender add headers (or a fake `From_`
/// line, i.e. a second message) that the agent vouches for. Every entry point (LMTP `MAIL`,
/// `RCPT` and `ORCPT=`, the `deliver` CLI's arguments) refuses such addresses with this one
/// function, and the engine checks again before it writes.
pub fn address_problem(address: &str) -> Option<&'static str> {
    if address.contains('\n') {
        Some("contains a line feed")
    } else if address.contains('\r') {
        Some("contains a carriage return")
    } else if address.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
}

/// A directory on the mailbox path that someone other than root and the recipient controls
/// (see [`containment::trusted`]): defer, naming it and its owner.
fn untrusted_directory(
    target: &Target,
    prefix: &str,
    error: &containment::WalkError,
    place: Place,
) -> Failure {
    let (_, _, foreign) = error.untrusted.unwrap_or_default();
    let reason = if foreign {
        format!("{prefix}{} is not owned by recipient", error.at)
    } else {
        format!("{prefix}{} is writable by others and not sticky", error.at)
    };
    Failure::Refused {
        place,
        reason,
        warning: Some(format!(
            "recipient {}: {prefix}{}; refusing delivery to {} (Mailbox/{})",
            target.key,
            error.untrusted_reason().unwrap_or_default(),
            target.full_path,
            target.object
        )),
    }
}

/// Resolve a recipient without touching the disk (virtual(8) V2–V10, V13–V15): lookup, deferring
/// entries, suspension, uid/gid and path rules.
pub fn resolve(directory: &Directory, recipient: &str) -> Result<Target, Status> {
    let settings = &directory.settings;
    if let Some(problem) = address_problem(recipient) {
        return Err(Failure::BadAddress {
            role: status::Role::Recipient,
            problem,
        }
        .into());
    }
    let folded = fold(recipient);
    // V13 (virtual(8) dies at the first recipient; we defer as a configuration error).
    if !settings.mailbox_base.starts_with('/') {
        return Err(Failure::Config {
            warning: format!(
                "do not specify relative pathname: mailbox base = {}",
                settings.mailbox_base
            ),
        }
        .into());
    }
    let Some(found) = directory.find_mailbox(recipient) else {
        return Err(Failure::UnknownUser { folded }.into());
    };
    let entry = found.entry;
    if let Some(deferral) = &entry.defer {
        return Err(Failure::Config {
            warning: format!(
                "recipient {folded}: Mailbox/{} is invalid ({}): {}",
                entry.object,
                deferral.reason.as_str(),
                deferral.message
            ),
        }
        .into());
    }
    if entry.suspended {
        return Err(Failure::Suspended { folded }.into());
    }
    let base = settings.mailbox_base.trim_end_matches('/');
    let base = if base.is_empty() { "/" } else { base };
    let full_path = format!("{base}/{}", entry.path);
    let bad_path = match contract::check_mailbox_path(&entry.path) {
        Ok(()) => None,
        Err(PathProblem::DotDot | PathProblem::Empty) => {
            // V14: the configuration error Postfix reports, checked before uid/gid (V7).
            return Err(Failure::Config {
                warning: format!(
                    "recipient {folded}: bad mailbox path {} in virtual_mailbox_maps",
                    entry.path
                ),
            }
            .into());
        }
        Err(problem) => Some(problem),
    };
    check_uid(&folded, entry.uid, settings.minimum_uid)?;
    check_gid(&folded, entry.gid)?;
    let format = if entry.path.ends_with('/') {
        Format::Maildir
    } else {
        Format::Mbox
    };
    let declared = match entry.format {
        MailboxFormat::Maildir => Format::Maildir,
        MailboxFormat::Mbox => Format::Mbox,
    };
    if format != declared {
        return Err(Failure::Config {
            warning: format!(
                "recipient {folded}: path {} disagrees with format {:?}",
                entry.path, entry.format
            ),
        }
        .into());
    }
    if let Some(problem) = bad_path {
        let place = match format {
            Format::Mbox => Place::Mbox(full_path.clone()),
            Format::Maildir => Place::Maildir,
        };
        return Err(unsafe_path(
            &entry.object,
            &folded,
            &full_path,
            problem.describe(),
            place,
        )
        .into());
    }
    Ok(Target {
        recipient: recipient.to_string(),
        key: found.key.to_string(),
        object: entry.object.clone(),
        base: base.to_string(),
        path: entry.path.clone(),
        full_path,
        format,
        uid: entry.uid,
        gid: entry.gid,
        quota: entry.quota,
        size_limit: settings.mailbox_size_limit,
        locks: settings.mailbox_lock.clone(),
    })
}

/// Validate a uid from the directory as Postfix does (virtual(8) V9): uid 0, (uid_t)-1 and uids below
/// the minimum are configuration errors (defer 4.3.5). The minimum is the directory's
/// `minimum_uid` or the agent's own [`uid_floor`], whichever is higher.
fn check_uid(recipient: &str, uid: u32, minimum_uid: u32) -> Result<(), Failure> {
    let floor = uid_floor();
    if uid == 0 || uid == u32::MAX || uid < minimum_uid.max(1) || uid < floor {
        let below_floor = uid != 0 && uid < floor && uid >= minimum_uid;
        return Err(Failure::Config {
            warning: format!(
                "recipient {recipient}: bad uid {uid} in virtual_uid_maps{}",
                if below_floor {
                    format!(" (below the agent's --minimum-uid {floor})")
                } else {
                    String::new()
                }
            ),
        });
    }
    Ok(())
}

/// Validate a gid (virtual(8) V10, current snapshot: gid 0 is refused).
fn check_gid(recipient: &str, gid: u32) -> Result<(), Failure> {
    if gid == 0 || gid == u32::MAX {
        return Err(Failure::Config {
            warning: format!("recipient {recipient}: bad gid {gid} in virtual_gid_maps"),
        });
    }
    Ok(())
}

/// The mailbox base of `target`, opened as [`open_base`] does, for work beside the delivery
/// (the autoreply state).
pub(crate) fn open_base_dir(target: &Target) -> Result<OwnedFd, String> {
    open_base(target).map_err(|_| format!("cannot open mailbox base {}", target.base))
}

/// Open the base directory (as the process: it is configuration, symlinks allowed).
fn open_base(target: &Target) -> Result<OwnedFd, Failure> {
    rustix::fs::open(
        target.base.as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| Failure::Io {
        place: Place::None,
        what: format!("cannot open mailbox base {}", target.base),
        errno,
        stage: status::Stage::Open,
        warning: None,
    })
}

/// RCPT-time checks: [`resolve`], then the quota against the current usage (docs/DELIVERY.md),
/// read as the recipient. Usage that cannot be read is not an error here: delivery reports it.
pub fn precheck(directory: &Directory, recipient: &str) -> Result<Target, Status> {
    let target = resolve(directory, recipient)?;
    if let Some(quota) = target.quota {
        let usage = open_base(&target).ok().and_then(|base| {
            let _identity = FsIdentity::assume(target.uid, target.gid).ok()?;
            match target.format {
                Format::Mbox => mbox::usage(&base, &target),
                Format::Maildir => maildir::usage(&base, &target, quota),
            }
        });
        if usage.is_some_and(|used| used >= quota) {
            let place = match target.format {
                Format::Mbox => Place::Mbox(target.full_path.clone()),
                Format::Maildir => Place::Maildir,
            };
            return Err(Failure::OverQuota { place }.into());
        }
    }
    Ok(target)
}

/// Deliver one copy of `message` (LF line ends, see [`crlf_to_lf`]) to `target`. Blocking;
/// safe to call from several threads at once.
pub fn deliver_one(
    target: &Target,
    sender: &str,
    original_recipient: &str,
    message: &[u8],
    options: &Options,
) -> Outcome {
    let started = Instant::now();
    let result = deliver_inner(target, sender, original_recipient, message, options);
    let (status, path, size) = match result {
        Ok((path, size)) => {
            let text = match target.format {
                Format::Mbox => "delivered to mailbox",
                Format::Maildir => "delivered to maildir",
            };
            (Status::new(Code(2, 0, 0), text), Some(path), size)
        }
        Err(failure) => (classify(&failure), None, 0),
    };
    Outcome {
        recipient: target.recipient.clone(),
        status,
        path,
        size,
        duration: started.elapsed(),
    }
}

fn deliver_inner(
    target: &Target,
    sender: &str,
    original_recipient: &str,
    message: &[u8],
    options: &Options,
) -> Result<(String, u64), Failure> {
    for (role, address) in [
        (status::Role::Sender, sender),
        (status::Role::Recipient, original_recipient),
        (status::Role::Recipient, target.recipient.as_str()),
    ] {
        if let Some(problem) = address_problem(address) {
            return Err(Failure::BadAddress { role, problem });
        }
    }
    if message::has_delivered_to(message, &target.recipient) {
        return Err(Failure::Loop {
            recipient: target.recipient.clone(),
        });
    }
    let headers = message::prepended_headers(sender, original_recipient, &target.recipient);
    let base = open_base(target)?;
    let _identity = FsIdentity::assume(target.uid, target.gid)?;
    match target.format {
        Format::Mbox => {
            let from = message::from_line(sender, &message::asctime_now());
            mbox::deliver(&base, target, from.as_bytes(), &headers, message, options)
                .map(|size| (target.full_path.clone(), size))
        }
        Format::Maildir => maildir::deliver(&base, target, &headers, message, options),
    }
}

/// Deliver one message to every recipient of `envelope`, independently and in order (virtual(8) V1):
/// [`precheck`] then [`deliver_one`] for each.
pub fn deliver(
    directory: &Directory,
    envelope: &Envelope,
    message: &[u8],
    options: &Options,
) -> Vec<Outcome> {
    envelope
        .recipients
        .iter()
        .map(|recipient| {
            let checked = precheck(directory, &recipient.address);
            deliver_checked(&checked, &envelope.sender, recipient, message, options)
        })
        .collect()
}

/// [`deliver_one`] to a recipient that `checked` resolved, or its refusal as an outcome.
fn deliver_checked(
    checked: &Result<Target, Status>,
    sender: &str,
    recipient: &Recipient,
    message: &[u8],
    options: &Options,
) -> Outcome {
    match checked {
        Ok(target) => deliver_one(
            target,
            sender,
            &recipient.original_recipient,
            message,
            options,
        ),
        Err(status) => Outcome {
            recipient: recipient.address.clone(),
            status: status.clone(),
            path: None,
            size: 0,
            duration: Duration::ZERO,
        },
    }
}
