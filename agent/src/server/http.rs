//! `/healthz`, `/readyz` and `/metrics` over HTTP/1.x, served by `hyper`.
//!
//! # Security
//! Anyone who can reach the port is untrusted (the operator's NetworkPolicy admits only the
//! metrics scraper's namespace, but the agent does not rely on it): at most
//! [`MAX_CONNECTIONS`] connections are served at once and more are closed at once (see
//! `accept_http`), the request head is capped at [`MAX_HEAD`] octets and [`HEAD_TIMEOUT`], a
//! whole connection at [`HEAD_TIMEOUT`] + [`WRITE_TIMEOUT`], only `GET` and `HEAD` of three fixed
//! paths are answered (other methods get 405, the query string is ignored), every response
//! closes the connection, and nothing in the request is echoed back. `/readyz` says only
//! `ready` or `not ready`; what is loaded (server, version, sizes, source problems) is on
//! `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Shared;
use super::metrics::Proto;

/// Largest request head (hyper's smallest buffer limit).
pub const MAX_HEAD: usize = 8192;
/// Connections served at once; a scraper and the kubelet's probes need a handful.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

const TEXT: &str = "text/plain; charset=utf-8";

/// What the HTTP server answers from.
#[derive(Debug)]
pub struct Probes {
    /// Connection state: the directory, the shutdown signal, the counters.
    pub shared: Arc<Shared>,
    /// Everything `/metrics` exports.
    pub registry: Registry,
}

/// Serve one request and close.
pub async fn serve<S>(stream: S, probes: Arc<Probes>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = probes.shared.metrics.open(Proto::Http);
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(&request, &probes);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(HEAD_TIMEOUT + WRITE_TIMEOUT, connection).await;
}

/// The response to one request (hyper leaves out the body of a `HEAD` response).
fn respond(request: &Request<Incoming>, probes: &Probes) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => {
            let shared = &probes.shared;
            if !*shared.shutdown.borrow() && shared.directory.current().is_some() {
                text(StatusCode::OK, TEXT, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n")
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::render(&probes.registry),
        ),
        _ => text(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::server::Limits;
    use crate::server::metrics::Metrics;

    /// Send `request` to a fresh server over an in-memory stream; the whole response.
    async fn exchange(request: &str) -> String {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let shared = Arc::new(Shared {
            directory: Arc::default(),
            metrics: Arc::new(metrics),
            limits: Limits::default(),
            backend: Arc::new(crate::deliver::Engine::new(Default::default())),
            hostname: "test".into(),
            shutdown,
        });
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve(server, Arc::new(Probes { shared, registry })));
        client.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        served.await.unwrap();
        response
    }

    #[tokio::test]
    async fn only_get_and_head_are_answered_and_the_query_is_ignored() {
        let get = exchange("GET /healthz?probe=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(get.starts_with("HTTP/1.1 200 "), "{get}");
        assert!(get.ends_with("\r\n\r\nok\n"), "{get}");
        let post = exchange("POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let head = exchange("HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(
            head.ends_with("\r\n\r\n"),
            "a HEAD response has no body: {head}"
        );
        let ready = exchange("GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(
            ready.starts_with("HTTP/1.1 503 "),
            "nothing loaded yet: {ready}"
        );
        let metrics = exchange("GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(
            metrics.contains("virtmail_open_connections{protocol=\"http\"} 1\n"),
            "{metrics}"
        );
    }
}
