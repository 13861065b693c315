//! The seam between the LMTP protocol and the delivery engine.
//!
//! LMTP only needs two things from delivery: a RCPT-time check and a blocking delivery of one
//! message that reports each recipient's [`Status`] as data, which LMTP renders into a reply
//! line ([`Reply::line`]). Keeping that behind a trait lets the protocol be tested on its own and
//! lets the engine evolve without touching the session code.

use std::fmt::Debug;

use virtmail_crds::Directory;
use virtmail_crds::address::quote_address;

use crate::deliver::{Code, Engine};
pub use crate::deliver::{Delivery, Outcome, Recipient, Status};

/// What LMTP needs from the delivery engine.
pub trait Backend: Send + Sync + Debug + 'static {
    /// RCPT-time checks knowable before DATA (unknown user, suspended, deferring entry, quota).
    fn precheck(&self, directory: &Directory, recipient: &str) -> Result<(), Status>;

    /// Deliver one copy per recipient, in order, handing each outcome to `report` as soon as it
    /// is durable (see [`Engine::deliver`]). Blocking: runs on a blocking thread.
    fn deliver(&self, delivery: Delivery<'_>, report: &mut dyn FnMut(Outcome) -> bool);
}

impl Backend for Engine {
    fn precheck(&self, directory: &Directory, recipient: &str) -> Result<(), Status> {
        Engine::precheck(self, directory, recipient).map(drop)
    }

    fn deliver(&self, delivery: Delivery<'_>, report: &mut dyn FnMut(Outcome) -> bool) {
        Engine::deliver(self, delivery, report);
    }
}

/// What LMTP replies about one recipient: a [`Status`] and the reply code it is rendered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced code and text.
    pub status: Status,
}

impl From<Status> for Reply {
    /// The engine's statuses: the reply code follows the enhanced code (virtual(8) V37).
    fn from(status: Status) -> Reply {
        Reply {
            code: status.reply_code(),
            status,
        }
    }
}

impl Reply {
    /// A temporary failure of the LMTP session itself (no directory yet, a check that
    /// panicked), not of delivery: `451 4.3.0`, where the engine's 4.3.0 (disk full) is 452.
    pub fn session_deferral(text: &str) -> Reply {
        Reply {
            code: 451,
            status: Status::new(Code(4, 3, 0), text),
        }
    }

    /// The reply line about `address`: reply code, enhanced code, the address in angle
    /// brackets, text.
    pub fn line(&self, address: &str) -> String {
        format!(
            "{} {} <{}> {}",
            self.code,
            self.status.code,
            quote_address(address),
            self.status.text
        )
    }
}
