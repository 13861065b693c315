//! `/metrics`, `/healthz` and `/readyz` over HTTP/1.1 (hyper), one request per connection.
//!
//! # Security
//!
//! Whatever the chart's NetworkPolicy admits can reach this port. It serves read-only data and
//! no request changes state: only GET and HEAD are answered. At most [`MAX_CONNECTIONS`] are
//! served at once, a request head is at most 8 KiB and must arrive within a few seconds, and a
//! whole connection ends a few seconds after that, so idle or slow clients cannot hold the
//! slots or exhaust the operator's descriptors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::metrics::{self, Metrics};

/// Connections served at once; more wait in the listen backlog. Scrapes and probes need a few.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the response: a slow reader cannot keep a slot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (hyper's smallest buffer limit).
const MAX_HEAD: usize = 8192;

/// Serve until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(|request: Request<hyper::body::Incoming>| {
                let response = respond(request.method(), request.uri().path(), &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(HEADER_TIMEOUT + WRITE_TIMEOUT, connection).await {
                Ok(Err(e)) => debug!(error = %e, "http connection"),
                Err(_) => debug!("http connection timed out"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

/// The answer to `method path` (the query is not part of `path`). HEAD is answered as GET,
/// and hyper leaves the body out.
pub fn respond(method: &Method, path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(ALLOW, "GET, HEAD")
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::from("method not allowed\n"))
            .unwrap_or_default();
    }
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" if metrics.ready() => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ready\n".into(),
        ),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "not ready\n".into(),
        ),
        "/metrics" => (StatusCode::OK, metrics::CONTENT_TYPE, metrics.render()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::from(body))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One raw request over TCP; the whole response as text.
    async fn exchange(request: &str, metrics: Arc<Metrics>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(serve(listener, metrics));
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read until the server closes");
        server.abort();
        response
    }

    #[tokio::test]
    async fn routes_by_path_ignoring_the_query() {
        let metrics = Arc::new(Metrics::default());
        let response = exchange(
            "GET /metrics?x=1 HTTP/1.0\r\nHost: localhost\r\n\r\n",
            metrics.clone(),
        )
        .await;
        assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
        assert!(
            response.contains("content-type: application/openmetrics-text"),
            "{response}"
        );
        assert!(response.contains("virtmail_operator_reconciles_total 0\n"));
        let response = exchange("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", metrics.clone()).await;
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        metrics.set_ready(true);
        let response = exchange("GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n", metrics).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("\r\n\r\nready\n"), "{response}");
    }

    #[tokio::test]
    async fn head_has_no_body_and_other_methods_are_refused() {
        let metrics = Arc::new(Metrics::default());
        let response = exchange("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", metrics.clone()).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("\r\n\r\n"), "{response}");
        let response = exchange(
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            metrics,
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
        assert!(response.contains("allow: GET, HEAD\r\n"), "{response}");
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused() {
        let padding = "x".repeat(MAX_HEAD);
        let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {padding}\r\n\r\n");
        let response = exchange(&request, Arc::new(Metrics::default())).await;
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    }

    #[test]
    fn unknown_paths_are_not_found() {
        let metrics = Metrics::default();
        let response = respond(&Method::GET, "/nothing", &metrics);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = respond(&Method::DELETE, "/nothing", &metrics);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
