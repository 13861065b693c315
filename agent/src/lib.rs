//! virtmail's delivery agent library.
//!
//! Layers of `serve`: a [`source`] produces directory versions into a holder; the [`server`]s
//! answer LMTP, socketmap and HTTP from it; [`serve`] wires them together with provisioning.

pub mod autoreply;
pub mod check;
pub mod deliver;
pub mod fs;
pub mod metrics;
pub mod provision;
pub mod serve;
pub mod server;
pub mod source;

/// Resolves once `stop` turns true (the guard `wait_for` returns is not `Send`).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
