//! The seam between the LMTP protocol and the delivery engine.
//!
//! LMTP only needs two things from delivery: a RCPT-time check and a blocking per-recipient
//! delivery that returns a status as data. Keeping that behind a trait lets the protocol be tested
//! on its own and lets the engine evolve without touching the session code.

use std::fmt::Debug;
use std::time::Duration;

use virtmail_crds::Directory;

/// A reply status: SMTP code, RFC 3463 enhanced code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code, e.g. `2.0.0`.
    pub enhanced: String,
    /// Human-readable text (without the address).
    pub text: String,
}

impl Status {
    /// Build a status; the reply code follows the enhanced code (virtual(8) V37).
    pub fn new(enhanced: &str, text: impl Into<String>) -> Status {
        Status {
            code: reply_code(enhanced),
            enhanced: enhanced.into(),
            text: text.into(),
        }
    }

    /// Reply class digit (2, 4 or 5).
    pub fn class(&self) -> u8 {
        (self.code / 100) as u8
    }
}

/// docs/DELIVERY.md: 2.0.0→250, 5.1.1→550, 5.2.2→552, 5.3.4→552 (size), 5.3.x/5.4.6→554,
/// 4.2.1→450 (suspended), 4.3.0→452, other 4.x.x→451, other 5.x.x→550.
pub fn reply_code(enhanced: &str) -> u16 {
    match enhanced {
        e if e.starts_with("2.") => 250,
        "5.1.1" => 550,
        "5.2.2" | "5.3.4" => 552,
        "5.4.6" => 554,
        e if e.starts_with("5.3.") => 554,
        e if e.starts_with("5.") => 550,
        "4.2.1" => 450,
        "4.3.0" => 452,
        _ => 451,
    }
}

/// One recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The RCPT address, unquoted (`john doe@example.test`).
    pub address: String,
    /// The address before alias expansion, for `X-Original-To`: the RCPT `ORCPT=rfc822;...`
    /// parameter when present, otherwise the RCPT address.
    pub original: String,
}

/// Result of one recipient's delivery.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The status to reply with.
    pub status: Status,
    /// Mailbox file or Maildir file written, if any.
    pub path: Option<String>,
    /// Bytes written.
    pub size: u64,
    /// Time spent delivering.
    pub duration: Duration,
}

/// What LMTP needs from the delivery engine.
pub trait Backend: Send + Sync + Debug + 'static {
    /// RCPT-time checks knowable before DATA (unknown user, suspended, deferring entry, quota).
    fn precheck(&self, directory: &Directory, recipient: &str) -> Result<(), Status>;

    /// Deliver one copy; blocking (runs on a blocking thread). `message` is the unstuffed body
    /// with LF line ends.
    fn deliver(
        &self,
        directory: &Directory,
        sender: &str,
        recipient: &Recipient,
        message: &[u8],
    ) -> Delivered;

    /// Work after a copy's reply is decided (the automatic reply); blocking, on the same thread
    /// as [`Backend::deliver`], after the reply has been handed to the session. Never changes
    /// the delivery's result.
    fn after_delivery(
        &self,
        _directory: &Directory,
        _sender: &str,
        _recipient: &Recipient,
        _message: &[u8],
        _delivered: &Delivered,
    ) {
    }
}
