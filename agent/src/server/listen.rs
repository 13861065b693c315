//! Listening addresses: `unix:PATH` or `HOST:PORT`.
//!
//! Unix sockets are created with a fixed mode (default 0666, see [`DEFAULT_SOCKET_MODE`]) because
//! Postfix's daemons run as user `postfix` and must be able to connect; access control is the
//! directory that holds the socket. A stale socket file left by a previous run is replaced, but a
//! socket some live process still answers on is not, and neither is any other kind of file.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Mode of created unix sockets unless `--socket-mode` says otherwise: Postfix's user must connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A unix stream socket at this path.
    Unix(PathBuf),
    /// A TCP address (tests and benchmarks use loopback).
    Tcp(SocketAddr),
}

impl std::str::FromStr for Addr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>()
            .map(Addr::Tcp)
            .map_err(|_| format!("{text:?} is neither unix:PATH nor HOST:PORT (numeric)"))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
            Addr::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// A bound listener of either kind.
#[derive(Debug)]
pub enum Listener {
    /// Unix stream socket (the path is removed again on drop).
    Unix(UnixListener, PathBuf),
    /// TCP socket.
    Tcp(TcpListener),
}

/// An accepted connection of either kind.
#[derive(Debug)]
pub enum Stream {
    /// Unix stream.
    Unix(UnixStream),
    /// TCP stream.
    Tcp(TcpStream),
}

impl Listener {
    /// Bind `addr`; unix sockets get `mode`.
    pub async fn bind(addr: &Addr, mode: u32) -> io::Result<Listener> {
        match addr {
            Addr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            Addr::Unix(path) => {
                remove_stale(path).await?;
                if let Some(parent) = path.parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent)?;
                }
                let listener = UnixListener::bind(path)?;
                // bind() applies the umask; set the documented mode explicitly.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Tcp(l) => Ok(Addr::Tcp(l.local_addr()?)),
            Listener::Unix(_, path) => Ok(Addr::Unix(path.clone())),
        }
    }

    /// Accept one connection.
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Remove a socket file nobody listens on; refuse to touch a live socket or a non-socket file.
async fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by a running server", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Parse an octal mode such as `0660` or `666`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{text:?} is not an octal mode"))?;
    if mode > 0o777 {
        return Err(format!("{text:?} is not a permission mode (max 0777)"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_address_kinds() {
        assert_eq!(
            "unix:/run/x.sock".parse::<Addr>(),
            Ok(Addr::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:24".parse::<Addr>(),
            Ok(Addr::Tcp("127.0.0.1:24".parse().unwrap()))
        );
        assert!("unix:".parse::<Addr>().is_err());
        assert!("localhost".parse::<Addr>().is_err());
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert!(parse_mode("0999").is_err());
    }
}
