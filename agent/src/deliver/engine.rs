//! The engine behind the LMTP server's [`Backend`] seam.

use std::time::Duration;

use virtmail_crds::Directory;

use crate::server::backend::{self, Backend, Delivered, Recipient};

use super::{Options, Status, deliver_one, precheck, resolve};

/// The delivery engine as an LMTP backend: `precheck` at RCPT, `deliver_one` after DATA.
#[derive(Debug, Default)]
pub struct Engine {
    options: Options,
}

impl Engine {
    /// An engine with `options`.
    pub fn new(options: Options) -> Engine {
        Engine { options }
    }
}

fn reply(status: &Status) -> backend::Status {
    backend::Status::new(&status.code.to_string(), status.text.clone())
}

impl Backend for Engine {
    fn precheck(&self, directory: &Directory, recipient: &str) -> Result<(), backend::Status> {
        match precheck(directory, recipient) {
            Ok(_) => Ok(()),
            Err(status) => {
                if let Some(warning) = &status.warning {
                    tracing::warn!("{warning}");
                }
                Err(reply(&status))
            }
        }
    }

    fn deliver(
        &self,
        directory: &Directory,
        sender: &str,
        recipient: &Recipient,
        message: &[u8],
    ) -> Delivered {
        // The quota is checked again with the message size inside deliver_one.
        let (status, path, size, duration) = match resolve(directory, &recipient.address) {
            Ok(target) => {
                let outcome =
                    deliver_one(&target, sender, &recipient.original, message, &self.options);
                (outcome.status, outcome.path, outcome.size, outcome.duration)
            }
            Err(status) => (status, None, 0, Duration::ZERO),
        };
        if let Some(warning) = &status.warning {
            tracing::warn!("{warning}");
        }
        Delivered {
            status: reply(&status),
            path,
            size,
            duration,
        }
    }

    fn after_delivery(
        &self,
        directory: &Directory,
        sender: &str,
        recipient: &Recipient,
        message: &[u8],
        delivered: &Delivered,
    ) {
        let Some(submission) = &self.options.submission else {
            return;
        };
        if delivered.status.class() != 2 {
            return;
        }
        let Some(found) = directory.find_mailbox(&recipient.address) else {
            return;
        };
        let Some(autoreply) = &found.entry.autoreply else {
            return;
        };
        let Ok(target) = resolve(directory, &recipient.address) else {
            return;
        };
        crate::autoreply::respond(
            submission,
            &target,
            autoreply,
            &directory.settings.recipient_delimiter,
            sender,
            &recipient.original,
            message,
        );
    }
}
