//! The delivery engine's side of the tests' world ([`virtmail_tests::delivery`]): deliveries
//! through the engine in this process.

use std::time::Duration;

use virtmail_agent::deliver::{self, Options, Outcome, Status};
use virtmail_crds::directory::Directory;
pub use virtmail_tests::delivery::*;

/// Deliveries into a [`World`]'s directory through the engine.
pub trait Engine {
    /// The directory deliveries look recipients up in.
    fn directory(&self) -> &Directory;

    /// Deliver `message` to `recipient` from `sender@origin.test` with [`options`].
    fn deliver(&self, recipient: &str, message: &[u8]) -> Outcome {
        self.deliver_with(recipient, "sender@origin.test", message, &options())
    }

    /// Deliver `message` from `sender` to `recipient` with `options`.
    fn deliver_with(
        &self,
        recipient: &str,
        sender: &str,
        message: &[u8],
        options: &Options,
    ) -> Outcome {
        match deliver::precheck(self.directory(), recipient) {
            Ok(target) => deliver::deliver_one(&target, sender, recipient, message, options),
            Err(status) => Outcome {
                recipient: recipient.into(),
                status,
                path: None,
                size: 0,
                duration: Duration::ZERO,
            },
        }
    }
}

impl Engine for World {
    fn directory(&self) -> &Directory {
        &self.directory
    }
}

/// Options with a short lock timeout so that lock tests are quick.
pub fn options() -> Options {
    Options {
        lock_timeout: Duration::from_millis(300),
        hostname: "mx.test".into(),
        ..Default::default()
    }
}

/// The enhanced status code of `status` (`2.0.0`, `4.2.0`, ...).
pub fn code(status: &Status) -> String {
    status.code.to_string()
}
