//! Provisioning driven by directory versions: each new version (and, without one, every
//! `interval`, so a volume fixed by an administrator is picked up) is provisioned on the mailbox
//! volume; in cluster mode the result goes to the Mailboxes' `Provisioned` condition, otherwise
//! problems are logged only.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use rustix::fs::{Mode, OFlags};
use tokio::sync::watch;
use virtmail_crds::Directory;

use super::mailbox_status;
use crate::provision;
use crate::source::Loaded;

/// Where provisioning results are reported besides the log.
#[derive(Clone)]
pub struct StatusReport {
    /// The API.
    pub client: kube::Client,
    /// Namespace of the Mailboxes.
    pub namespace: String,
}

impl fmt::Debug for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusReport")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Provision each new version (latest only, one at a time) and every `interval`, until the
/// holder is gone.
pub async fn run(
    mut versions: watch::Receiver<Option<Arc<Loaded>>>,
    interval: Duration,
    report: Option<StatusReport>,
) {
    let mut written = mailbox_status::Written::default();
    // The version current at start counts as new.
    versions.mark_changed();
    loop {
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(loaded) = versions.borrow_and_update().clone() else {
            continue;
        };
        let Some(reports) = provision_round(loaded.directory.clone()).await else {
            continue;
        };
        if let Some(to) = &report {
            mailbox_status::publish(&to.client, &to.namespace, &reports, &mut written).await;
        }
    }
}

/// Register the gauge of the last round's problems.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(Unprovisioned));
}

/// Provision one directory below its `mailboxBase` (blocking; call on a blocking thread).
fn provision_directory(directory: &Directory) -> Result<Vec<provision::Report>, String> {
    let base = PathBuf::from(&directory.settings.mailbox_base);
    let fd = rustix::fs::open(
        &base,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("mailbox base {}: {e}", base.display()))?;
    Ok(provision::provision_all(
        &fd,
        &base.to_string_lossy(),
        directory,
    ))
}

/// Log a provisioning round: one summary line, one warning per problem.
fn log_reports(reports: &[provision::Report]) {
    let created = reports
        .iter()
        .filter(|r| r.state == provision::State::Created)
        .count();
    let mut problems = 0;
    for r in reports {
        if let provision::State::Problem { reason, message } = &r.state {
            problems += 1;
            tracing::warn!(mailbox = %r.object, path = %r.path, reason, "{message}");
        }
    }
    tracing::info!(mailboxes = reports.len(), created, problems, "provisioned");
}

/// One provisioning round on a blocking thread (it switches that thread's file system
/// identity), logged; `None` when the base cannot be opened.
async fn provision_round(directory: Arc<Directory>) -> Option<Vec<provision::Report>> {
    match tokio::task::spawn_blocking(move || provision_directory(&directory)).await {
        Ok(Ok(reports)) => {
            log_reports(&reports);
            Some(reports)
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "cannot provision");
            None
        }
        Err(error) => {
            tracing::error!(%error, "provisioning task failed");
            None
        }
    }
}

/// `virtmail_mailboxes_unprovisioned`, once a round has run.
#[derive(Debug)]
struct Unprovisioned;

impl Collector for Unprovisioned {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        match provision::last_round_problems() {
            Some(problems) => crate::metrics::gauge(
                &mut encoder,
                "virtmail_mailboxes_unprovisioned",
                "Mailboxes the last provisioning round could not create or check.",
                i64::try_from(problems).unwrap_or(i64::MAX),
            ),
            None => Ok(()),
        }
    }
}
