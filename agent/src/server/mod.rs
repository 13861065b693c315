//! The agent's servers: LMTP, socketmap and HTTP over the current directory, nothing else.
//!
//! Every connection reads the directory from [`Shared::directory`] (a [`Holder`] some
//! [`crate::source::DirectorySource`] fills); loading, polling and provisioning happen outside.

pub mod backend;
pub mod http;
pub mod listen;
pub mod lmtp;
pub mod logging;
pub mod metrics;
pub mod socketmap;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::source::Holder;
use backend::Backend;
use listen::{Addr, Listener};
use metrics::Metrics;

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

/// The three listeners, bound.
#[derive(Debug)]
pub struct Listeners {
    lmtp: Listener,
    socketmap: Listener,
    http: Listener,
}

impl Listeners {
    /// Bind LMTP, socketmap and HTTP; unix sockets get `socket_mode`.
    pub async fn bind(
        lmtp: &Addr,
        socketmap: &Addr,
        http: &Addr,
        socket_mode: u32,
    ) -> anyhow::Result<Self> {
        async fn bind(addr: &Addr, mode: u32, name: &str) -> anyhow::Result<Listener> {
            Listener::bind(addr, mode)
                .await
                .with_context(|| format!("{name} listener {addr}"))
        }
        let listeners = Listeners {
            lmtp: bind(lmtp, socket_mode, "LMTP").await?,
            socketmap: bind(socketmap, socket_mode, "socketmap").await?,
            http: bind(http, socket_mode, "HTTP").await?,
        };
        tracing::info!(
            lmtp = %listeners.lmtp.local_addr()?,
            socketmap = %listeners.socketmap.local_addr()?,
            http = %listeners.http.local_addr()?,
            socket_mode = format!("{socket_mode:o}"),
            "listening"
        );
        Ok(listeners)
    }

    /// Serve until `shared.shutdown` turns true, then give open LMTP sessions up to
    /// `shutdown_grace` to finish. `registry` is what `/metrics` exports.
    pub async fn serve(self, shared: Arc<Shared>, registry: Registry) {
        let limits = &shared.limits;
        let sessions = Arc::new(Semaphore::new(limits.max_connections));
        let socketmap_clients = Arc::new(Semaphore::new(limits.max_socketmap_connections));
        // Capped: an idle or slow client holds a permit until its timeout, and more clients
        // than this are closed at once instead of costing a task and a descriptor each.
        let http_clients = Arc::new(Semaphore::new(http::MAX_CONNECTIONS));
        let probes = Arc::new(http::Probes {
            shared: shared.clone(),
            registry,
        });
        let lmtp = accept(self.lmtp, shared.clone(), sessions.clone(), {
            let shared = shared.clone();
            move |stream, permit| match permit {
                Some(permit) => {
                    tokio::spawn(lmtp::serve(stream, shared.clone(), permit));
                }
                None => {
                    shared.metrics.refused_connection();
                    tokio::spawn(lmtp::refuse(stream));
                }
            }
        });
        let socketmap = accept(self.socketmap, shared.clone(), socketmap_clients, {
            let shared = shared.clone();
            move |stream, permit| {
                if let Some(permit) = permit {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        socketmap::serve(stream, shared).await;
                    });
                }
            }
        });
        let http = accept(self.http, shared.clone(), http_clients, {
            let shared = shared.clone();
            move |stream, permit| match permit {
                Some(permit) => {
                    let probes = probes.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        http::serve(stream, probes).await;
                    });
                }
                None => shared.metrics.refused_http_connection(),
            }
        });
        // Accept loops return on the signal and drop their listeners (removing unix socket files).
        tokio::join!(lmtp, socketmap, http);
        let grace = shared.limits.shutdown_grace;
        let all = u32::try_from(shared.limits.max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, sessions.acquire_many(all)).await {
            Ok(_) => tracing::info!("all LMTP sessions finished"),
            Err(_) => tracing::warn!("LMTP sessions still open after {grace:?}; exiting anyway"),
        }
    }
}

/// Accept until shutdown, handing each connection to `handle` with a permit from `slots`, or
/// `None` when all are taken (a connection dropped there is closed).
async fn accept(
    listener: Listener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    handle: impl Fn(listen::Stream, Option<OwnedSemaphorePermit>),
) {
    let mut stop = shared.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = crate::stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(stream) => handle(stream, slots.clone().try_acquire_owned().ok()),
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
