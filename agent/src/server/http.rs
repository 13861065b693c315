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
