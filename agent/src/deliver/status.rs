//! Delivery results as data: every failure is classified here, once.
//!
//! The engine never decides a status code anywhere else. Code that fails builds a [`Failure`]
//! describing *what* went wrong (an errno at a given step, an unsafe path, a loop, ...);
//! [`classify`] turns it into a [`Status`]: temporary or permanent, the RFC 3463 enhanced code
//! and the DSN text, following Postfix virtual(8) (virtual(8) V6–V30) except where docs/DELIVERY.md says
//! otherwise. The LMTP reply code and the sysexits code are derived from the status, again in
//! one place each ([`Status::reply_code`], [`exit_code`]).

use std::fmt;

use rustix::io::Errno;

/// Temporary or permanent, or success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// 2.x.x: delivered.
    Success,
    /// 4.x.x: defer, Postfix retries.
    Temporary,
    /// 5.x.x: bounce.
    Permanent,
}

/// An RFC 3463 enhanced status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(pub u8, pub u16, pub u16);

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The result of a delivery step: enhanced code, DSN text and an optional log warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Enhanced status code (`2.0.0`, `4.2.0`, `5.1.1`, ...).
    pub code: Code,
    /// DSN text, as Postfix virtual(8) words it (e.g. `delivered to maildir`).
    pub text: String,
    /// A warning for the log (virtual(8) logs one beside some statuses, virtual(8) V35). Not part of
    /// the reply.
    pub warning: Option<String>,
}

impl Status {
    /// A status without a warning.
    pub fn new(code: Code, text: impl Into<String>) -> Status {
        Status {
            code,
            text: text.into(),
            warning: None,
        }
    }

    fn warn(mut self, warning: impl Into<String>) -> Status {
        self.warning = Some(warning.into());
        self
    }

    /// Success, temporary or permanent.
    pub fn class(&self) -> Class {
        match self.code.0 {
            2 => Class::Success,
            4 => Class::Temporary,
            _ => Class::Permanent,
        }
    }

    /// Whether the message was delivered.
    pub fn is_success(&self) -> bool {
        self.class() == Class::Success
    }

    /// The LMTP reply code (docs/DELIVERY.md, virtual(8) V37): 2.0.0→250, 5.1.1→550, 5.2.2→552,
    /// 5.3.x/5.4.6→554, 4.2.1 (suspended)→450, 4.3.0 (disk full)→452, other 4.x.x→451,
    /// other 5.x.x→550.
    pub fn reply_code(&self) -> u16 {
        match self.code {
            Code(2, _, _) => 250,
            Code(5, 1, 1) => 550,
            Code(5, 2, 2) | Code(5, 3, 4) => 552,
            Code(5, 3, _) | Code(5, 4, 6) => 554,
            Code(5, _, _) => 550,
            Code(4, 2, 1) => 450,
            Code(4, 3, 0) => 452,
            _ => 451,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Which mailbox kind a failure happened in; it decides the text prefix (virtual(8) V17, V28).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `delivery failed to mailbox <path>: ` (virtual(8) V17).
    Mbox(String),
    /// `maildir delivery failed: ` (virtual(8) V28).
    Maildir,
    /// No prefix (RCPT-time checks, containment of the base).
    None,
}

impl Place {
    fn prefix(&self) -> String {
        match self {
            Place::Mbox(path) => format!("delivery failed to mailbox {path}: "),
            Place::Maildir => "maildir delivery failed: ".into(),
            Place::None => String::new(),
        }
    }
}

/// The status an errno gets when nothing more specific applies (Postfix `mbox_dsn()` default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Opening, creating, locking, linking: default 4.2.0.
    Open,
    /// Writing, fsync: Postfix defaults to 5.3.0 (bounce on EIO); virtmail defers 4.2.0
    /// (docs/DELIVERY.md: never bounce what a retry can deliver, virtual(8) V36).
    Write,
}

/// Everything that can go wrong, before classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No mailbox entry (virtual(8) V6).
    UnknownUser {
        /// Folded recipient.
        folded: String,
    },
    /// The mailbox is suspended (docs/DELIVERY.md: 450 4.2.1).
    Suspended {
        /// Folded recipient.
        folded: String,
    },
    /// Configuration error found before touching the disk (virtual(8) V7–V10, V14): a deferring
    /// directory entry, a bad uid/gid, a `..` path, a relative base.
    Config {
        /// Warning for the log.
        warning: String,
    },
    /// A path that leaves the base or crosses a symlink (docs/DELIVERY.md).
    Unsafe {
        /// Where.
        place: Place,
        /// What was refused (becomes the text after the prefix).
        reason: String,
        /// Warning naming the mailbox.
        warning: String,
    },
    /// A system call failed with `errno` (Postfix `mbox_dsn()`).
    Io {
        /// Where.
        place: Place,
        /// What was attempted, e.g. `cannot open file`.
        what: String,
        /// The error.
        errno: Errno,
        /// Default class of unclassified errors.
        stage: Stage,
        /// Optional warning.
        warning: Option<String>,
    },
    /// A precondition on an existing file failed (hard links, changed status, wrong owner,
    /// busy lock): always defer 4.2.0 (virtual(8) V17, V19, V20).
    Refused {
        /// Where.
        place: Place,
        /// Reason text after the prefix.
        reason: String,
        /// Optional warning.
        warning: Option<String>,
    },
    /// The destination exists but is not a regular file (virtual(8) V20): bounce 5.3.5.
    NotRegular {
        /// Recipient.
        recipient: String,
        /// Full path.
        path: String,
    },
    /// The write would exceed `mailboxSizeLimit` (virtual(8) V29, enforced before writing).
    TooLarge {
        /// Where.
        place: Place,
    },
    /// The mailbox quota would be exceeded (docs/DELIVERY.md).
    OverQuota {
        /// Where.
        place: Place,
    },
    /// The message already carries `Delivered-To: <recipient>` (docs/DELIVERY.md).
    Loop {
        /// The recipient as written in Delivered-To.
        recipient: String,
    },
    /// An envelope address with CR, LF or NUL (see [`super::address_problem`]): never written.
    BadAddress {
        /// Which address.
        role: Role,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The recipient's identity could not be assumed (setfsuid did not take effect).
    Identity {
        /// What happened.
        reason: String,
    },
}

/// Which envelope address a [`Failure::BadAddress`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The envelope sender (5.1.7).
    Sender,
    /// A recipient or original recipient (5.1.3).
    Recipient,
}

/// Postfix `mbox_dsn(errno, default)`: EAGAIN/ESTALE→4.2.0, ENOSPC→4.3.0, EDQUOT/EFBIG→5.2.2.
fn errno_code(errno: Errno, stage: Stage) -> Code {
    match errno {
        Errno::AGAIN | Errno::STALE => Code(4, 2, 0),
        Errno::NOSPC => Code(4, 3, 0),
        Errno::DQUOT | Errno::FBIG => Code(5, 2, 2),
        _ => match stage {
            Stage::Open | Stage::Write => Code(4, 2, 0),
        },
    }
}

/// `strerror()` text for an errno, as Postfix's `%m`.
pub fn strerror(errno: Errno) -> String {
    // std formats with the C library's strerror_r and appends " (os error N)".
    let text = std::io::Error::from_raw_os_error(errno.raw_os_error()).to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Turn a failure into a status: the one place that decides class, code and text.
pub fn classify(failure: &Failure) -> Status {
    match failure {
        Failure::UnknownUser { folded } => {
            Status::new(Code(5, 1, 1), format!("unknown user: \"{folded}\""))
        }
        Failure::Suspended { folded } => {
            Status::new(Code(4, 2, 1), format!("mailbox {folded} is suspended"))
        }
        Failure::Config { warning } => {
            Status::new(Code(4, 3, 5), "mail system configuration error").warn(warning.clone())
        }
        Failure::Unsafe {
            place,
            reason,
            warning,
        } => {
            Status::new(Code(4, 2, 0), format!("{}{reason}", place.prefix())).warn(warning.clone())
        }
        Failure::Io {
            place,
            what,
            errno,
            stage,
            warning,
        } => {
            let status = Status::new(
                errno_code(*errno, *stage),
                format!("{}{what}: {}", place.prefix(), strerror(*errno)),
            );
            match warning {
                Some(w) => status.warn(w.clone()),
                None => status,
            }
        }
        Failure::Refused {
            place,
            reason,
            warning,
        } => {
            let status = Status::new(Code(4, 2, 0), format!("{}{reason}", place.prefix()));
            match warning {
                Some(w) => status.warn(w.clone()),
                None => status,
            }
        }
        Failure::NotRegular { recipient, path } => {
            Status::new(Code(5, 3, 5), "mail system configuration error").warn(format!(
                "recipient {recipient}: destination {path} is not a regular file"
            ))
        }
        Failure::TooLarge { place } => Status::new(
            Code(5, 2, 2),
            format!(
                "{}error writing message: {}",
                place.prefix(),
                strerror(Errno::FBIG)
            ),
        ),
        Failure::OverQuota { place } => Status::new(
            Code(5, 2, 2),
            format!("{}mailbox is over quota", place.prefix()),
        ),
        Failure::Loop { recipient } => Status::new(
            Code(5, 4, 6),
            format!("mail forwarding loop for {recipient}"),
        ),
        Failure::BadAddress { role, problem } => match role {
            Role::Sender => Status::new(
                Code(5, 1, 7),
                format!("bad sender address syntax: the address {problem}"),
            ),
            Role::Recipient => Status::new(
                Code(5, 1, 3),
                format!("bad recipient address syntax: the address {problem}"),
            ),
        },
        Failure::Identity { reason } => Status::new(
            Code(4, 3, 0),
            format!("cannot assume the recipient's identity: {reason}"),
        )
        .warn(reason.clone()),
    }
}

impl From<crate::fs::identity::IdentityError> for Failure {
    fn from(error: crate::fs::identity::IdentityError) -> Failure {
        Failure::Identity {
            reason: error.reason,
        }
    }
}

impl From<Failure> for Status {
    fn from(failure: Failure) -> Status {
        classify(&failure)
    }
}

/// sysexits code for a whole `deliver` run (as Postfix pipe(8) reads it): 0 when every
/// recipient was delivered, 75 (EX_TEMPFAIL) when any was deferred, 67 (EX_NOUSER) when every
/// failure is an unknown user, 69 (EX_UNAVAILABLE) for other permanent failures.
pub fn exit_code<'a>(statuses: impl IntoIterator<Item = &'a Status>) -> u8 {
    let mut any_temporary = false;
    let mut any_permanent = false;
    let mut all_unknown = true;
    for status in statuses {
        match status.class() {
            Class::Success => {}
            Class::Temporary => any_temporary = true,
            Class::Permanent => {
                any_permanent = true;
                all_unknown &= status.code == Code(5, 1, 1);
            }
        }
    }
    if any_temporary {
        75
    } else if !any_permanent {
        0
    } else if all_unknown {
        67
    } else {
        69
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v17_mbox_dsn_errno_mapping() {
        let io = |errno| {
            classify(&Failure::Io {
                place: Place::Mbox("/b/x".into()),
                what: "cannot open file".into(),
                errno,
                stage: Stage::Open,
                warning: None,
            })
        };
        assert_eq!(io(Errno::AGAIN).code, Code(4, 2, 0));
        assert_eq!(io(Errno::NOSPC).code, Code(4, 3, 0));
        assert_eq!(io(Errno::DQUOT).code, Code(5, 2, 2));
        assert_eq!(io(Errno::FBIG).code, Code(5, 2, 2));
        assert_eq!(io(Errno::ACCESS).code, Code(4, 2, 0));
        assert_eq!(
            io(Errno::NOENT).text,
            "delivery failed to mailbox /b/x: cannot open file: No such file or directory"
        );
    }

    #[test]
    fn v37_reply_mapping() {
        let code = |c| Status::new(c, "").reply_code();
        assert_eq!(code(Code(2, 0, 0)), 250);
        assert_eq!(code(Code(5, 1, 1)), 550);
        assert_eq!(code(Code(5, 2, 2)), 552);
        assert_eq!(code(Code(5, 3, 5)), 554);
        assert_eq!(code(Code(5, 4, 6)), 554);
        assert_eq!(code(Code(4, 2, 0)), 451);
        assert_eq!(code(Code(4, 3, 5)), 451);
        assert_eq!(code(Code(4, 3, 0)), 452);
        assert_eq!(code(Code(4, 2, 1)), 450);
    }

    #[test]
    fn v6_unknown_user_text() {
        let s = classify(&Failure::UnknownUser {
            folded: "nobody@example.test".into(),
        });
        assert_eq!(s.to_string(), "5.1.1 unknown user: \"nobody@example.test\"");
    }

    #[test]
    fn sysexits_for_a_run() {
        let ok = Status::new(Code(2, 0, 0), "");
        let unknown = Status::new(Code(5, 1, 1), "");
        let bounce = Status::new(Code(5, 2, 2), "");
        let defer = Status::new(Code(4, 2, 0), "");
        assert_eq!(exit_code([&ok, &ok]), 0);
        assert_eq!(exit_code([&ok, &unknown]), 67);
        assert_eq!(exit_code([&unknown, &bounce]), 69);
        assert_eq!(exit_code([&bounce, &defer]), 75);
    }
}
