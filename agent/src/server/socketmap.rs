//! Postfix socketmap server (netstring framing, maps `domain`, `mailbox`, `alias`).
//!
//! Postfix sends the full address as the key (a pattern table gets no partial keys) and keeps
//! its case, so this server folds case, strips the extension and applies catch-alls itself.
//!
//! Hand-written: no maintained crate serves Postfix's socketmap protocol, and its netstring
//! framing is a few lines that must be bounded before anything is allocated.
//!
//! # Security
//! Clients are Postfix daemons, but the framing is parsed as untrusted input: the length prefix
//! is bounded before anything is allocated ([`MAX_QUERY`]), replies are capped at [`MAX_REPLY`],
//! a malformed frame closes the connection, and idle connections are closed after a timeout.
//! The server is read-only and answers only from the loaded directory.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use virtmail_crds::Directory;
use virtmail_crds::address;
use virtmail_crds::contract::SocketmapMap;
use virtmail_crds::directory::Deferral;

use super::Shared;
use super::metrics::Proto;

/// Largest accepted query (Postfix's `socketmap_max_query_size` default).
pub const MAX_QUERY: usize = 10_000;
/// Largest reply sent (Postfix's `socketmap_max_reply_size` default).
pub const MAX_REPLY: usize = 100_000;

/// A socketmap reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Found, with a non-empty value.
    Ok(String),
    /// Not found.
    NotFound,
    /// Temporary failure (Postfix defers).
    Temp(String),
    /// Permanent failure (Postfix treats it as a configuration error, still temporary for mail).
    Perm(String),
}

impl Reply {
    /// The netstring payload.
    pub fn payload(&self) -> String {
        match self {
            Reply::Ok(v) => format!("OK {v}"),
            Reply::NotFound => "NOTFOUND ".into(),
            Reply::Temp(r) => format!("TEMP {r}"),
            Reply::Perm(r) => format!("PERM {r}"),
        }
    }

    /// Index into [`super::metrics::RESULTS`].
    fn result_index(&self) -> usize {
        match self {
            Reply::Ok(_) => 0,
            Reply::NotFound => 1,
            Reply::Temp(_) => 2,
            Reply::Perm(_) => 3,
        }
    }
}

/// Answer one request payload `<map> <key>` from `directory` (`None`: nothing loaded yet).
pub fn lookup(directory: Option<&Directory>, request: &str) -> (Option<SocketmapMap>, Reply) {
    let (name, key) = request.split_once(' ').unwrap_or((request, ""));
    let Some(map) = SocketmapMap::parse(name) else {
        return (None, Reply::Perm(format!("unknown map {name:?}")));
    };

    let Some(d) = directory else {
        return (Some(map), Reply::Temp("no directory loaded yet".into()));
    };
    if key.is_empty() {
        return (Some(map), Reply::NotFound);
    }
    let reply = match map {
        SocketmapMap::Domain => {
            let domain = address::fold(key);
            if !domain.contains('@') && d.domains.contains_key(&domain) {
                Reply::Ok(domain)
            } else {
                Reply::NotFound
            }
        }
        SocketmapMap::Mailbox => address_reply(key, |key| {
            d.find_mailbox(key)
                .map(|found| (found.entry.defer.as_deref(), Some(found.entry.path.clone())))
        }),
        // Postfix also asks the alias map for bare domains (virtual_alias_domains defaults to
        // $virtual_alias_maps); those are never alias domains here.
        SocketmapMap::Alias => address_reply(key, |key| {
            d.find_alias(key).map(|found| {
                let to = &found.entry.to;
                (
                    found.entry.defer.as_ref(),
                    (!to.is_empty()).then(|| to.join(",")),
                )
            })
        }),
    };
    (Some(map), reply)
}

/// The reply for an address `key` (quoted or not): not found unless `find` knows the address,
/// a temporary failure for an entry that defers, else the entry's value (`None`: not found).
fn address_reply<'d>(
    key: &str,
    find: impl FnOnce(&str) -> Option<(Option<&'d Deferral>, Option<String>)>,
) -> Reply {
    let key = address::unquote_address(key);
    if address::split(&key).is_none() {
        return Reply::NotFound;
    }
    match find(&key) {
        Some((Some(defer), _)) => Reply::Temp(format!("{}: {}", defer.reason, defer.message)),
        Some((None, Some(value))) => Reply::Ok(value),
        Some((None, None)) | None => Reply::NotFound,
    }
}

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Clean end of input between frames.
    Eof,
    /// Malformed netstring or over the size limit.
    Format(&'static str),
    /// I/O error or EOF inside a frame.
    Io,
}

/// Read one netstring of at most `max` bytes.
pub async fn read_netstring<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let mut byte = [0u8; 1];
        match reader.read(&mut byte).await {
            Ok(0) if digits == 0 => return Err(FrameError::Eof),
            Ok(0) | Err(_) => return Err(FrameError::Io),
            Ok(_) => {}
        }
        match byte[0] {
            b':' if digits > 0 => break,
            b @ b'0'..=b'9' => {
                if digits > 0 && len == 0 {
                    return Err(FrameError::Format("leading zero in length"));
                }
                len = len * 10 + usize::from(b - b'0');
                digits += 1;
                if len > max {
                    return Err(FrameError::Format("request too long"));
                }
            }
            _ => return Err(FrameError::Format("bad length")),
        }
    }
    let mut data = vec![0u8; len + 1];
    reader
        .read_exact(&mut data)
        .await
        .map_err(|_| FrameError::Io)?;
    if data.pop() != Some(b',') {
        return Err(FrameError::Format("missing ','"));
    }
    Ok(data)
}

/// Encode a netstring.
pub fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.push(b',');
    out
}

/// Serve one client until it closes, idles out, or sends a malformed frame.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, shared: Arc<Shared>) {
    let _open = shared.metrics.open(Proto::Socketmap);
    let idle = shared.limits.socketmap_idle;
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    loop {
        let frame = match tokio::time::timeout(idle, read_netstring(&mut reader, MAX_QUERY)).await {
            Err(_) => return,
            Ok(Err(FrameError::Format(why))) => {
                tracing::warn!("socketmap: closing connection: {why}");
                return;
            }
            Ok(Err(_)) => return,
            Ok(Ok(frame)) => frame,
        };
        let (map, reply) = match std::str::from_utf8(&frame) {
            // Postfix never sends non-UTF-8 keys with smtputf8_enable; nothing can match them.
            Err(_) => (SocketmapMap::parse(frame_map_name(&frame)), Reply::NotFound),
            Ok(request) => {
                let current = shared.directory.current();
                lookup(current.as_deref().map(|l| &*l.directory), request)
            }
        };
        shared.metrics.lookup(map, reply.result_index());
        let mut payload = reply.payload().into_bytes();
        if payload.len() > MAX_REPLY {
            payload = Reply::Temp("reply too large".into()).payload().into_bytes();
        }
        let frame = netstring(&payload);
        match tokio::time::timeout(Duration::from_secs(100), write.write_all(&frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

fn frame_map_name(frame: &[u8]) -> &str {
    let end = frame.iter().position(|&b| b == b' ').unwrap_or(frame.len());
    std::str::from_utf8(&frame[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn netstring_framing_and_limits() {
        let mut r = BufReader::new(&b"5:hello,0:,"[..]);
        assert_eq!(read_netstring(&mut r, 10).await.unwrap(), b"hello");
        assert_eq!(read_netstring(&mut r, 10).await.unwrap(), b"");
        assert_eq!(read_netstring(&mut r, 10).await, Err(FrameError::Eof));
        let mut r = BufReader::new(&b"11:hello world,"[..]);
        assert!(matches!(
            read_netstring(&mut r, 10).await,
            Err(FrameError::Format(_))
        ));
        let mut r = BufReader::new(&b"05:hello,"[..]);
        assert!(matches!(
            read_netstring(&mut r, 10).await,
            Err(FrameError::Format(_))
        ));
        let mut r = BufReader::new(&b"5:hello;"[..]);
        assert!(matches!(
            read_netstring(&mut r, 10).await,
            Err(FrameError::Format(_))
        ));
        assert_eq!(netstring(b"OK 1"), b"4:OK 1,");
    }
}
