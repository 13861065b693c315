//! Cluster mode: the directory comes from the ConfigMaps the operator publishes; each new
//! version is provisioned on the volume and reported on the Mailboxes.

pub mod assemble;
pub mod mounted;
pub mod source;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use rustix::fs::{Mode, OFlags};
use tokio::sync::watch;
use virtmail_crds::Directory;

use crate::provision;
use source::SourceState;

/// Where the directory comes from in cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterSource {
    /// Namespace of the MailServer.
    pub namespace: String,
    /// Name of the MailServer.
    pub server: String,
    /// Mailbox base to provision (default: the directory's `mailboxBase`).
    pub mailbox_base: Option<PathBuf>,
    /// What the source last saw.
    pub state: Arc<SourceState>,
    /// Provisioning also runs this often without a new version, so a volume fixed by an
    /// administrator (an owner corrected, a directory made writable) is reported promptly.
    pub reprovision_interval: std::time::Duration,
}

impl ClusterSource {
    /// Watch, publish every complete version through `publish`, provision it and report.
    /// Runs until `stop` turns true.
    pub async fn run(
        self,
        client: Client,
        publish: impl Fn(Arc<Directory>, &str) + Send + Sync + 'static,
        mut stop: watch::Receiver<bool>,
    ) {
        let (versions_tx, versions_rx) = watch::channel::<Option<Arc<Directory>>>(None);
        let provisioner = tokio::spawn(provision_loop(
            client.clone(),
            self.namespace.clone(),
            self.reprovision_interval,
            versions_rx,
        ));
        let base = self.mailbox_base.clone();
        let watch_task = source::run(
            client,
            &self.namespace,
            &self.server,
            self.state.clone(),
            move |mut directory, version| {
                if let Some(base) = &base {
                    directory.settings.mailbox_base = base.display().to_string();
                }
                let shared = Arc::new(directory);
                publish(shared.clone(), version);
                let _ = versions_tx.send(Some(shared));
            },
        );
        tokio::select! {
            _ = watch_task => {}
            _ = async { while stop.changed().await.is_ok() && !*stop.borrow() {} } => {}
        }
        provisioner.abort();
    }
}

/// Provision one directory below its `mailboxBase` (blocking; call on a blocking thread).
pub fn provision_directory(directory: &Directory) -> Result<Vec<provision::Report>, String> {
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
pub fn log_reports(reports: &[provision::Report]) {
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

/// Provision each new version (latest only, one at a time) and patch the Mailbox statuses.
async fn provision_loop(
    client: Client,
    namespace: String,
    interval: std::time::Duration,
    mut versions: watch::Receiver<Option<Arc<Directory>>>,
) {
    let mut written = status::Written::default();
    loop {
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(directory) = versions.borrow_and_update().clone() else {
            continue;
        };
        if let Some(reports) = provision_round(directory).await {
            status::publish(&client, &namespace, &reports, &mut written).await;
        }
    }
}

/// One provisioning round on a blocking thread (it switches that thread's file system
/// identity), logged; `None` when the base cannot be opened. Shared by both modes.
pub async fn provision_round(directory: Arc<Directory>) -> Option<Vec<provision::Report>> {
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
