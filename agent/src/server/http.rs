//! A minimal HTTP/1.x server for `/healthz`, `/readyz` and `/metrics`.
//!
//! # Security
//! Requests are untrusted: the request head is capped at 8 KiB and 5 seconds, only `GET` and
//! `HEAD` of three fixed paths are answered, every response closes the connection, and nothing in
//! the request is echoed back.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Shared;
use super::metrics::Proto;

const MAX_HEAD: usize = 8192;

/// Serve one request and close.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: Arc<Shared>) {
    let _open = shared.metrics.open(Proto::Http);
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream)).await;
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
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
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

/// Why the newest directory version is not served, one line per fact (fail static: the last
/// good version keeps serving meanwhile).
fn source_detail(shared: &Shared) -> String {
    let Some(state) = &shared.source else {
        return String::new();
    };
    let status = state.get();
    let mut out = String::new();
    if let Some(pending) = &status.pending {
        out.push_str(&format!("pending: {pending}\n"));
    }
    if let Some(error) = &status.watch_error {
        out.push_str(&format!("source error: {error}\n"));
    }
    out
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
            match shared.directory.current() {
                _ if stopping => (503, text, "not ready: shutting down\n".to_string()),
                Some(loaded) => (
                    200,
                    text,
                    format!(
                        "ready: server {} directory version {} ({} domains, {} mailboxes, {} aliases)\n{}",
                        loaded.directory.settings.server,
                        loaded.version,
                        loaded.directory.domains.len(),
                        loaded.directory.mailboxes.len(),
                        loaded.directory.aliases.len(),
                        source_detail(shared)
                    ),
                ),
                None => (
                    503,
                    text,
                    format!("not ready: no directory loaded\n{}", source_detail(shared)),
                ),
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
