//! virtmail's delivery agent library.

pub mod autoreply;
pub mod check;
pub mod cluster;
pub mod deliver;
pub mod fs;
pub mod provision;
pub mod server;
