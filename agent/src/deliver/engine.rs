//! The engine a server drives: RCPT-time checks, then one message for every recipient of its
//! envelope, each copy's [`Outcome`] handed back as soon as it is durable, automatic replies
//! after it. It knows no protocol: the server renders each [`Status`].

use virtmail_crds::Directory;

use super::{Envelope, Options, Outcome, Recipient, Status, Target, deliver_checked, message};
use super::{precheck, resolve};

/// A message and its envelope, as a server hands them over after receiving the message.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The directory version the transaction started with.
    pub directory: &'a Directory,
    /// Sender and recipients, as accepted.
    pub envelope: &'a Envelope,
    /// The message with LF line ends.
    pub message: &'a [u8],
}

/// The delivery engine with its tunables.
#[derive(Debug, Default)]
pub struct Engine {
    options: Options,
}

fn log_warning(status: &Status) {
    if let Some(warning) = &status.warning {
        tracing::warn!("{warning}");
    }
}

impl Engine {
    /// An engine with `options`.
    pub fn new(options: Options) -> Engine {
        Engine { options }
    }

    /// [`precheck`], with the status's warning logged.
    pub fn precheck(&self, directory: &Directory, recipient: &str) -> Result<Target, Status> {
        precheck(directory, recipient).inspect_err(log_warning)
    }

    /// Deliver `delivery` to each of its recipients, independently and in order (virtual(8)
    /// V1). Each outcome goes to `report` as soon as its copy is durable; `report` returning
    /// `false` (nobody listens any more) stops before the next copy. Blocking.
    pub fn deliver(&self, delivery: Delivery<'_>, report: &mut dyn FnMut(Outcome) -> bool) {
        let sender = delivery.envelope.sender.as_str();
        let mut recipients = delivery.envelope.recipients.clone();
        let message = message::adopt_postfix_original_recipient(&mut recipients, delivery.message);
        for recipient in &recipients {
            // The quota is checked with the message size during delivery, so only `resolve`
            // runs first; its target serves the automatic reply too.
            let checked = resolve(delivery.directory, &recipient.address);
            let outcome = deliver_checked(&checked, sender, recipient, message, &self.options);
            log_warning(&outcome.status);
            let delivered = outcome.status.is_success();
            if !report(outcome) {
                return;
            }
            // The reply for this copy is on its way; an automatic reply comes after it.
            if delivered && let Ok(target) = &checked {
                self.reply_automatically(delivery.directory, sender, recipient, target, message);
            }
        }
    }

    fn reply_automatically(
        &self,
        directory: &Directory,
        sender: &str,
        recipient: &Recipient,
        target: &Target,
        message: &[u8],
    ) {
        let Some(submission) = &self.options.submission else {
            return;
        };
        let Some(autoreply) = directory
            .mailboxes
            .get(&target.key)
            .and_then(|entry| entry.autoreply.as_ref())
        else {
            return;
        };
        crate::autoreply::respond(
            submission,
            target,
            autoreply,
            &directory.settings.recipient_delimiter,
            sender,
            &recipient.original_recipient,
            message,
        );
    }
}
