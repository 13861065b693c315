//! `virtmail-agent serve`: one directory source filling the holder, the servers answering from
//! it, and provisioning of each new version, until SIGTERM or SIGINT.

pub mod mailbox_status;
pub mod provisioning;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::server::backend::Backend;
use crate::server::listen::Addr;
use crate::server::metrics::Metrics;
use crate::server::{Limits, Listeners, Shared};
use crate::source::metrics::SourceMetrics;
use crate::source::{DirectorySource, Holder, Publisher};

/// Everything `serve` needs besides the source.
#[derive(Debug, Clone)]
pub struct Config {
    /// LMTP address.
    pub lmtp: Addr,
    /// socketmap address.
    pub socketmap: Addr,
    /// HTTP address.
    pub http: Addr,
    /// Mode of created unix sockets.
    pub socket_mode: u32,
    /// Name in the greeting and LHLO reply.
    pub hostname: String,
    /// Limits.
    pub limits: Limits,
    /// The Postfix container's queue size file, if it writes one.
    pub postfix_queue_stats: Option<PathBuf>,
    /// Overrides every directory's `mailboxBase` (running outside a pod).
    pub mailbox_base: Option<PathBuf>,
    /// Provisioning also runs this often without a new version, so a volume fixed by an
    /// administrator (an owner corrected, a directory made writable) is picked up promptly.
    pub reprovision_interval: Duration,
    /// Where provisioning results go besides the log (cluster mode).
    pub status_report: Option<provisioning::StatusReport>,
}

/// Run until SIGTERM or SIGINT, then shut down gracefully.
pub async fn run<S: DirectorySource>(
    mut source: S,
    config: Config,
    backend: Arc<dyn Backend>,
) -> anyhow::Result<()> {
    let holder = Arc::new(Holder::default());
    let mut registry = crate::metrics::registry(config.postfix_queue_stats.clone());
    let metrics = Metrics::default();
    metrics.register(&mut registry);
    let source_metrics =
        SourceMetrics::register(&mut registry, holder.clone(), S::FOLLOWS_PUBLISHED_VERSIONS);
    provisioning::register(&mut registry);
    let publisher = Publisher::new(holder.clone(), source_metrics, config.mailbox_base.clone());

    source.prepare(&publisher).await;
    let listeners = Listeners::bind(
        &config.lmtp,
        &config.socketmap,
        &config.http,
        config.socket_mode,
    )
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        directory: holder.clone(),
        metrics: Arc::new(metrics),
        limits: config.limits,
        backend,
        hostname: config.hostname,
        shutdown: stop_rx.clone(),
    });
    tokio::spawn(source.run(publisher, stop_rx));
    tokio::spawn(provisioning::run(
        holder.subscribe(),
        config.reprovision_interval,
        config.status_report,
    ));
    let servers = tokio::spawn(listeners.serve(shared, registry));

    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections, finishing open sessions");
    let _ = stop_tx.send(true);
    servers.await?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
