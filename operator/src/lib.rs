//! virtmail's operator: reconciles MailServers into a published directory and a Postfix pod.

pub mod build;
pub mod cache;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod input_changes;
pub mod lease;
pub mod metrics;
pub mod owned;
pub mod pacing;
pub mod profile;
pub mod rbac;
pub mod reconcile;
pub mod watches;
