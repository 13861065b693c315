//! A minimal HTTP/1.x server for `/healthz`, `/readyz` and `/metrics`.
//!
//! # Security
//! Anyone who can reach the port is untrusted (the operator's NetworkPolicy admits only the
//! metrics scraper's namespace, but the agent does not rely on it): at most
//! [`MAX_CONNECTIONS`] connections are served at once and more are closed at once (see
//! `accept_http`), the request head is capped at 8 KiB and [`HEAD_TIMEOUT`], the response write
//! at [`WRITE_TIMEOUT`], only `GET` and `HEAD` of three fixed paths are answered, every response
//! closes the connection, and nothing in the request is echoed back. `/readyz` says only
//! `ready` or `not ready`; what is loaded (server, version, sizes, source problems) is on
//! `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Shared;
use super::metrics::Proto;

const MAX_HEAD: usize = 8192;
/// Connections served at once; a scraper and the kubelet's probes need a handful.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve one request and close.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: Arc<Shared>) {
    let _open = shared.metrics.open(Proto::Http);
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
    let (status, content_type, body, head_only) = match head {
        Ok(Some(head)) => respond(&head, &shared),
        Ok(None) => (400, "text/plain", "bad request\n".to_string(), false),
        Err(_) => return,
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Read up to the blank line that ends the request head.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return String::from_utf8(head).ok();
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

/// Gauges of the directory source: 1 while a newer version cannot be served, 1 while the source
/// cannot be read (API unreachable, volume unreadable).
fn source_metrics(shared: &Shared) -> String {
    let Some(state) = &shared.source else {
        return String::new();
    };
    let status = state.get();
    format!(
        "# HELP virtmail_directory_pending 1 while a newer directory version cannot be served yet (missing or mismatched shard); the last good version keeps serving.\n\
         # TYPE virtmail_directory_pending gauge\n\
         virtmail_directory_pending {}\n\
         # HELP virtmail_directory_source_error 1 while the directory source cannot be read (API unreachable, volume unreadable).\n\
         # TYPE virtmail_directory_source_error gauge\n\
         virtmail_directory_source_error {}\n",
        u8::from(status.pending.is_some()),
        u8::from(status.watch_error.is_some())
    )
}

fn respond(head: &str, shared: &Shared) -> (u16, &'static str, String, bool) {
    let mut words = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (405, "text/plain", "method not allowed\n".into(), false);
    }
    let path = target.split('?').next().unwrap_or("");
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match path {
        "/healthz" => (200, text, "ok\n".to_string()),
        "/readyz" => {
            let stopping = *shared.shutdown.borrow();
            if !stopping && shared.directory.current().is_some() {
                (200, text, "ready\n".to_string())
            } else {
                (503, text, "not ready\n".to_string())
            }
        }
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(&shared.directory) + &source_metrics(shared),
        ),
        _ => (404, text, "not found\n".to_string()),
    };
    (status, content_type, body, head_only)
}
