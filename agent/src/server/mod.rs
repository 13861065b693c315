//! `virtmail-agent serve`: LMTP, socketmap and HTTP servers over a hot-swapped directory.
//!
//! The directory lives in a [`reload::Holder`] (an atomic `Arc` swap). In standalone mode a
//! [`reload::FileSource`] feeds it from `--resources`; a cluster source only has to call
//! [`reload::Holder::swap`] too.

pub mod backend;
pub mod http;
pub mod listen;
pub mod lmtp;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod socketmap;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{Semaphore, watch};

use crate::cluster::source::SourceState;
use backend::Backend;
use listen::{Addr, Listener};
use metrics::Metrics;
use reload::{FileSource, Holder};

/// Protocol limits (defaults suit Postfix's lmtp(8) client).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent LMTP sessions; more get `421 4.3.2`.
    pub max_connections: usize,
    /// Concurrent socketmap clients; more are closed.
    pub max_socketmap_connections: usize,
    /// Accepted RCPTs per transaction; more get `452 4.5.3` (Postfix sends at most 50).
    pub max_recipients: usize,
    /// Announced and enforced message size; 0 = the MailServer's `mailboxSizeLimit`, else 50 MiB.
    pub max_message_size: u64,
    /// Wait for a command (and for a reply write).
    pub command_timeout: Duration,
    /// Wait for each chunk of message data.
    pub data_timeout: Duration,
    /// Idle socketmap connections are closed after this (Postfix itself closes after 10 s).
    pub socketmap_idle: Duration,
    /// Protocol errors tolerated per session.
    pub max_errors: u32,
    /// How long shutdown waits for sessions to finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100,
            max_socketmap_connections: 1000,
            max_recipients: 100,
            max_message_size: 0,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            socketmap_idle: Duration::from_secs(30),
            max_errors: 20,
            shutdown_grace: Duration::from_secs(60),
        }
    }
}

/// Where the directory comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Standalone: resource manifests under `--resources`.
    Files(FileSource),
    /// Cluster: the directory ConfigMaps the operator publishes (`--namespace`, `--server`).
    Cluster(crate::cluster::ClusterSource),
    /// Cluster without API access: the same ConfigMaps as a projected volume (`--directory-dir`).
    Mounted(crate::cluster::mounted::MountedSource),
}

impl Source {
    /// What a directory source reports for `/readyz` and `/metrics` (none in standalone mode,
    /// which reports through its reload counters).
    pub fn state(&self) -> Option<Arc<SourceState>> {
        match self {
            Source::Files(_) => None,
            Source::Cluster(source) => Some(source.state.clone()),
            Source::Mounted(source) => Some(source.state.clone()),
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the directory comes from.
    pub source: Source,
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
    pub postfix_queue_stats: Option<std::path::PathBuf>,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The current directory.
    pub directory: Arc<Holder>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: Limits,
    /// The delivery engine.
    pub backend: Arc<dyn Backend>,
    /// Greeting name.
    pub hostname: String,
    /// Why the newest directory version is not served (cluster and mounted modes).
    pub source: Option<Arc<SourceState>>,
    /// Turns true when shutdown begins.
    pub shutdown: watch::Receiver<bool>,
}

/// The host name for greetings: the kernel's, else `localhost`.
pub fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "localhost".into())
}

/// Run until SIGTERM or SIGINT, then shut down gracefully.
pub async fn run(config: Config, backend: Arc<dyn Backend>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::with_postfix_queue_stats(
        config.postfix_queue_stats.clone(),
    ));
    let holder = Arc::new(Holder::default());
    let files_seen = match &config.source {
        Source::Files(source) => {
            let (source, h, m) = (source.clone(), holder.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || source.load_initial(&h, &m)).await?
        }
        _ => Vec::new(),
    };
    let lmtp = Listener::bind(&config.lmtp, config.socket_mode)
        .await
        .with_context(|| format!("LMTP listener {}", config.lmtp))?;
    let socketmap = Listener::bind(&config.socketmap, config.socket_mode)
        .await
        .with_context(|| format!("socketmap listener {}", config.socketmap))?;
    let http = Listener::bind(&config.http, config.socket_mode)
        .await
        .with_context(|| format!("HTTP listener {}", config.http))?;
    tracing::info!(
        lmtp = %lmtp.local_addr()?,
        socketmap = %socketmap.local_addr()?,
        http = %http.local_addr()?,
        socket_mode = format!("{:o}", config.socket_mode),
        "listening"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        directory: holder.clone(),
        metrics: metrics.clone(),
        limits: config.limits.clone(),
        backend,
        hostname: config.hostname.clone(),
        source: config.source.state(),
        shutdown: stop_rx.clone(),
    });
    let publish_into = |holder: Arc<Holder>, metrics: Arc<Metrics>, from: &'static str| {
        move |directory: Arc<virtmail_crds::Directory>, version: &str| {
            let loaded = holder.swap_with_version(directory, version.to_string());
            metrics.reload_ok(0);
            tracing::info!(
                version = %loaded.version,
                mailboxes = loaded.directory.mailboxes.len(),
                "directory loaded from {from}"
            );
        }
    };
    match config.source.clone() {
        Source::Files(source) => {
            tokio::spawn(source.run(files_seen, holder.clone(), metrics.clone(), stop_rx.clone()));
            tokio::spawn(provision_standalone(
                holder.clone(),
                Duration::from_secs(60),
            ));
        }
        Source::Cluster(source) => {
            // kubeconfig from the environment, or the pod's service account.
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API (cluster mode)")?;
            let publish = publish_into(holder.clone(), metrics.clone(), "ConfigMaps");
            tokio::spawn(source.run(client, publish, stop_rx.clone()));
        }
        Source::Mounted(source) => {
            let publish = publish_into(holder.clone(), metrics.clone(), "the mounted volume");
            // No API: provisioning problems go to the log (as in standalone mode).
            let interval = source.reprovision_interval;
            tokio::spawn(source.run(publish, stop_rx.clone()));
            tokio::spawn(provision_standalone(holder.clone(), interval));
        }
    }

    let sessions = Arc::new(Semaphore::new(config.limits.max_connections));
    let lmtp_task = tokio::spawn(accept_lmtp(lmtp, shared.clone(), sessions.clone()));
    let map_task = tokio::spawn(accept_socketmap(socketmap, shared.clone()));
    let http_task = tokio::spawn(accept_http(http, shared.clone()));

    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections, finishing open sessions");
    let _ = stop_tx.send(true);
    // Accept loops return on the signal and drop their listeners (removing unix socket files).
    let _ = tokio::join!(lmtp_task, map_task, http_task);
    let all = u32::try_from(config.limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(config.limits.shutdown_grace, sessions.acquire_many(all)).await {
        Ok(_) => tracing::info!("all LMTP sessions finished"),
        Err(_) => tracing::warn!(
            "LMTP sessions still open after {:?}; exiting anyway",
            config.limits.shutdown_grace
        ),
    }
    Ok(())
}

/// Standalone mode: provision the mailboxes of every directory swapped in (and again every
/// `interval`, so a volume fixed by hand is picked up). There is no API to report to; problems
/// are logged.
async fn provision_standalone(holder: Arc<Holder>, interval: Duration) {
    let mut done: Option<(String, std::time::Instant)> = None;
    loop {
        if let Some(loaded) = holder.current() {
            let due = match &done {
                Some((version, at)) => *version != loaded.version || at.elapsed() >= interval,
                None => true,
            };
            if due {
                let version = loaded.version.clone();
                crate::cluster::provision_round(loaded.directory.clone()).await;
                done = Some((version, std::time::Instant::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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

/// Accept until shutdown; each turn either gets a connection or sees the stop signal.
async fn accept_until_stopped(listener: &Listener, shared: &Shared) -> Option<listen::Stream> {
    let mut stop = shared.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => return None,
            accepted = listener.accept() => match accepted {
                Ok(stream) => return Some(stream),
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn accept_lmtp(listener: Listener, shared: Arc<Shared>, sessions: Arc<Semaphore>) {
    while let Some(stream) = accept_until_stopped(&listener, &shared).await {
        match sessions.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(lmtp::serve(stream, shared.clone(), permit));
            }
            Err(_) => {
                shared.metrics.refused_connection();
                tokio::spawn(lmtp::refuse(stream));
            }
        }
    }
}

async fn accept_socketmap(listener: Listener, shared: Arc<Shared>) {
    let clients = Arc::new(Semaphore::new(shared.limits.max_socketmap_connections));
    while let Some(stream) = accept_until_stopped(&listener, &shared).await {
        if let Ok(permit) = clients.clone().try_acquire_owned() {
            let shared = shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                socketmap::serve(stream, shared).await;
            });
        }
    }
}

async fn accept_http(listener: Listener, shared: Arc<Shared>) {
    // Capped: an idle or slow client holds a permit until its timeout, and more clients than
    // this are closed at once instead of costing a task and a descriptor each.
    let clients = Arc::new(Semaphore::new(http::MAX_CONNECTIONS));
    while let Some(stream) = accept_until_stopped(&listener, &shared).await {
        match clients.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    http::serve(stream, shared).await;
                });
            }
            Err(_) => {
                shared.metrics.refused_http_connection();
                drop(stream);
            }
        }
    }
}

/// Resolves once shutdown has begun (the guard `wait_for` returns is not `Send`).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Parse durations like `300s`, `2m`, `500ms` or bare seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 30s, 500ms, 5m)");
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}
