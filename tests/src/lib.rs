//! Test support for virtmail's end-to-end suites: locating the workspace and its binaries, and
//! starting the real components the suites run against.

pub mod agent;
pub mod cluster;
pub mod delivery;
pub mod dovecot;
pub mod e2e;
pub mod fixtures;
pub mod kubelet;
pub mod lmtp;
pub mod mail;
pub mod mailstack;
pub mod node;
pub mod operator;
pub mod postfix;
pub mod process;
pub mod reliability;
pub mod serve;
pub mod socketmap;
pub mod tmpfs;

use std::path::PathBuf;

/// Root of the workspace.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}
