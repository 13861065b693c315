//! The seam between the LMTP protocol and the delivery engine.
//!
//! LMTP only needs two things from delivery: a RCPT-time check and a blocking delivery of one
//! message that reports each recipient's [`Status`] as data, which LMTP renders into a reply
//! line ([`reply_line`]). Keeping that behind a trait lets the protocol be tested on its own and
//! lets the engine evolve without touching the session code.

use std::fmt::Debug;

use virtmail_crds::Directory;
use virtmail_crds::address::quote_address;

pub use crate::deliver::{Code, Delivery, Engine, Outcome, Recipient, Status};

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

/// The LMTP reply for `status` about `address`: reply code, enhanced code, the address in
/// angle brackets, text (virtual(8) V37 for the codes).
pub fn reply_line(status: &Status, address: &str) -> String {
    format!(
        "{} {} <{}> {}",
        status.reply_code(),
        status.code,
        quote_address(address),
        status.text
    )
}
